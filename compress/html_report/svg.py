"""Inline SVG charts for the HTML report, drawn directly (no plotting library): grouped bars per category and
a heatmap. Every mark carries its exact value (data-value) and a tooltip (<title>); all text is escaped."""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

__all__ = ["Series", "bar_chart", "heatmap", "COLORS", "nice_top"]

# Okabe & Ito's colour-blind-safe palette
COLORS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#8C6D1F", "#000000"]
WIDTH, HEIGHT = 580, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 30, 44
MAX_X_LABELS = 24


@dataclass
class Series:
    label: str
    values: list[float | None]  # one per category; None: not measured there
    color: int = 0  # index into COLORS: the run's, so that a run keeps its colour in every chart


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def nice_top(largest: float) -> tuple[float, float]:
    """(axis top, tick step): the smallest 1/2/2.5/5 × 10^k step giving at most 5 ticks above zero."""
    if not largest > 0:
        return 1.0, 0.2
    raw = largest / 5
    exponent = math.floor(math.log10(raw))
    # written out, not multiplied: 2.5e-05, never 2.5000000000000004e-05, so tick labels stay round
    step = next(s for s in (float(f"{m}e{e}") for e in (exponent, exponent + 1) for m in (1, 2, 2.5, 5)) if s >= raw)
    return step * math.ceil(largest / step - 1e-9), step


def _tick_text(value: float, percent: bool) -> str:
    return f"{value * 100:.4g}%" if percent else f"{value:.3g}"


def _value_text(value: float, percent: bool) -> str:
    return f"{value * 100:.2f}%" if percent else f"{value:.4g}"


def _color(series: Series) -> str:
    return COLORS[series.color % len(COLORS)]


def _svg_open(width: int, height: int, title: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
            f'<text class="chart-title" x="{LEFT}" y="18">{escape(title)}</text>']


def _legend(series: list[Series], width: int) -> list[str]:
    parts, x = [], width - RIGHT
    for index in reversed(range(len(series))):
        label = series[index].label
        x -= 18 + 7 * min(len(label), 40)
        parts.append(f'<rect x="{x}" y="9" width="10" height="10" fill="{_color(series[index])}"/>'
                     f'<text class="legend" x="{x + 14}" y="18">{escape(label[:40])}</text>')
    return parts


def bar_chart(title: str, categories: list[str], series: list[Series], y_label: str = "",
              percent: bool = False, x_label: str = "layer", legend: bool | None = None) -> str:
    """Grouped bars: one group per category, one bar per series (values ≥ 0; None or non-finite: no bar); a
    legend naming the series where there are several (or where `legend` says so)."""
    values = [v for s in series for v in s.values if _finite(v)]
    top, step = nice_top(max([v for v in values if v > 0], default=0.0))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    base = TOP + plot_h
    parts = _svg_open(WIDTH, HEIGHT, title)
    if legend if legend is not None else len(series) > 1:
        parts += _legend(series, WIDTH)
    for k in range(round(top / step) + 1):  # gridlines and y ticks
        y = base - plot_h * (k * step) / top
        parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.2f}" y2="{y:.2f}"/>'
                     f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.2f}" text-anchor="end">'
                     f'{_tick_text(k * step, percent)}</text>')
    slot = plot_w / max(len(categories), 1)
    bar_w = slot * 0.8 / max(len(series), 1)
    every = max(1, math.ceil(len(categories) / MAX_X_LABELS))
    for c, category in enumerate(categories):
        x0 = LEFT + c * slot + slot * 0.1
        for s, one in enumerate(series):
            value = one.values[c]
            if not _finite(value) or value < 0:
                continue
            height = plot_h * value / top
            shown = _value_text(value, percent)
            parts.append(f'<rect class="bar" data-series="{s}" data-category="{escape(category)}" '
                         f'data-value="{value!r}" x="{x0 + s * bar_w:.3f}" y="{base - height:.3f}" '
                         f'width="{max(bar_w - 1, 1):.3f}" height="{height:.3f}" fill="{_color(one)}">'
                         f'<title>{escape(one.label)} · {escape(x_label)} {escape(category)}: {shown}</title></rect>')
        if c % every == 0:
            parts.append(f'<text class="tick" x="{LEFT + (c + 0.5) * slot:.2f}" y="{base + 16}" '
                         f'text-anchor="middle">{escape(category)}</text>')
    parts.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{base}" y2="{base}"/>')
    parts.append(f'<text class="axis-label" x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 8}" '
                 f'text-anchor="middle">{escape(x_label)}</text>')
    if y_label:
        parts.append(f'<text class="axis-label" transform="translate(14 {TOP + plot_h / 2:.1f}) rotate(-90)" '
                     f'text-anchor="middle">{escape(y_label)}</text>')
    return "".join(parts) + "</svg>"


def _shade(fraction: float) -> str:
    """White (0) to the palette's blue (1)."""
    r, g, b = (int(round(255 + (target - 255) * fraction)) for target in (0x00, 0x72, 0xB2))
    return f"#{r:02x}{g:02x}{b:02x}"


def heatmap(title: str, rows: list[str], columns: list[str], values: list[list[float | None]],
            row_label: str = "layer", column_label: str = "expert", percent: bool = True) -> str:
    """A grid of cells (rows × columns) shaded from 0 (white) to the largest value (blue)."""
    cell_w, cell_h = max(18, min(48, 480 // max(len(columns), 1))), 16
    left, top = 70, TOP + 18
    width = max(left + cell_w * len(columns) + 140, 320)
    height = max(top + cell_h * len(rows), top + 96) + 40
    largest = max([v for row in values for v in row if _finite(v)], default=0.0) or 1.0
    parts = _svg_open(width, height, title)
    every = max(1, math.ceil(len(columns) / 24))
    for j, column in enumerate(columns):
        if j % every == 0:
            parts.append(f'<text class="tick" x="{left + (j + 0.5) * cell_w:.1f}" y="{top - 5}" '
                         f'text-anchor="middle">{escape(column)}</text>')
    for i, row in enumerate(rows):
        y = top + i * cell_h
        parts.append(f'<text class="tick" x="{left - 6}" y="{y + cell_h - 4}" text-anchor="end">{escape(row)}</text>')
        for j, value in enumerate(values[i]):
            if not _finite(value):
                continue
            shown = _value_text(value, percent)
            parts.append(f'<rect class="cell" data-row="{escape(row)}" data-column="{escape(columns[j])}" '
                         f'data-value="{value!r}" x="{left + j * cell_w}" y="{y}" width="{cell_w - 1}" '
                         f'height="{cell_h - 1}" fill="{_shade(max(value, 0) / largest)}">'
                         f'<title>{escape(row_label)} {escape(row)}, {escape(column_label)} {escape(columns[j])}: '
                         f'{shown}</title></rect>')
    scale_x = left + cell_w * len(columns) + 24  # the colour scale: 0 .. largest
    for k in range(11):
        parts.append(f'<rect x="{scale_x}" y="{top + (10 - k) * 8}" width="14" height="8" fill="{_shade(k / 10)}"/>')
    parts.append(f'<text class="tick" x="{scale_x + 20}" y="{top + 8}">{_value_text(largest, percent)}</text>'
                 f'<text class="tick" x="{scale_x + 20}" y="{top + 88}">0</text>')
    parts.append(f'<text class="axis-label" x="{left + cell_w * len(columns) / 2:.1f}" y="{height - 10}" '
                 f'text-anchor="middle">{escape(column_label)}</text>'
                 f'<text class="axis-label" transform="translate(14 {top + cell_h * len(rows) / 2:.1f}) rotate(-90)" '
                 f'text-anchor="middle">{escape(row_label)}</text>')
    return "".join(parts) + "</svg>"
