"""The report's charts, drawn with matplotlib (figures built directly, no pyplot state, saved by its SVG backend)
and embedded in the page as inline SVG: grouped bars per category and a heatmap. Each mark (bar, cell) carries a
gid and a tooltip with its exact value; the SVG is the same bytes for the same reports (fixed hash salt, no date).
matplotlib is imported here only, when a report is drawn."""
from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass, field
from html import escape

from compress.errors import BadInput

__all__ = ["Series", "Chart", "bar_figure", "heatmap_figure", "bar_gid", "cell_gid", "COLORS"]

# Okabe & Ito's colour-blind-safe palette: a run keeps its colour in every chart
COLORS = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#8C6D1F", "#000000"]
WIDTH, HEIGHT = 5.6, 2.8  # inches; the SVG backend draws 72 points to the inch
MAX_X_LABELS = 24
LABEL_CHARS = 48
COLOR_STEPS = 32  # the heatmap's colour bar
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False,
         "axes.edgecolor": "#888888", "xtick.color": "#444444", "ytick.color": "#444444",
         "axes.labelcolor": "#333333", "legend.frameon": False}
# at save time: ids from a fixed salt (not random), text as <text> (no per-chart glyph definitions)
SAVE = {"svg.hashsalt": "compress-report", "svg.fonttype": "none"}
NO_METADATA = {"Creator": None, "Date": None, "Format": None, "Type": None}


def _matplotlib():
    try:
        import matplotlib
    except ImportError:
        raise BadInput("compress report draws its charts with matplotlib: pip install 'compress[report]'") from None
    return matplotlib


@dataclass
class Series:
    label: str
    values: list[float | None]  # one per category; None: not measured there
    color: int = 0  # index into COLORS: the run's


@dataclass
class Chart:
    heading: str
    figure: object  # a matplotlib Figure
    tips: dict[str, str] = field(default_factory=dict)  # gid -> the mark's tooltip

    def svg(self, prefix: str) -> str:
        """The figure as an inline <svg> element whose ids all start with `prefix` (unique in the page)."""
        matplotlib = _matplotlib()
        buffer = io.StringIO()
        with matplotlib.rc_context(SAVE):
            self.figure.savefig(buffer, format="svg", metadata=NO_METADATA)
        text = buffer.getvalue()
        text = text[text.index("<svg"):]  # no XML declaration or DOCTYPE inside HTML
        for gid, tip in self.tips.items():
            text = text.replace(f'<g id="{gid}">', f'<g id="{gid}"><title>{escape(tip, quote=False)}</title>', 1)
        text = re.sub(r"<[^>]*>", lambda tag: _prefixed(tag.group(0), prefix), text)  # tags only, never text
        return text.replace("<svg ", f'<svg class="chart" role="img" aria-label="{escape(self.heading)}" ', 1)


def _prefixed(tag: str, prefix: str) -> str:
    return re.sub(r'(\bid="|url\(#|href="#)', lambda m: m.group(1) + prefix, tag)


def bar_gid(series: int, category: int) -> str:
    return f"bar-{series}-{category}"


def cell_gid(column: int, row: int) -> str:
    return f"cell-{column}-{row}"


def _drawn(value) -> bool:
    """A bar or cell is drawn for a finite value ≥ 0; None, NaN, inf or a negative value leave a gap."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value >= 0)


def _plain(text: str) -> str:
    """Text shown as written: a `$` pair would otherwise start matplotlib's math mode."""
    return str(text).replace("$", r"\$")


def _short(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else "…" + text[-(LABEL_CHARS - 1):]  # a path's end tells runs apart


def _value_text(value: float, percent: bool) -> str:
    return f"{value * 100:.2f}%" if percent else f"{value:.4g}"


def _category_axis(axis_set_ticks, categories: list[str]) -> None:
    every = max(1, math.ceil(len(categories) / MAX_X_LABELS))
    shown = range(0, len(categories), every)
    axis_set_ticks(list(shown), [_plain(categories[c]) for c in shown])


def bar_figure(categories: list[str], series: list[Series], y_label: str = "", percent: bool = False,
               x_label: str = "layer", legend: bool | None = None, heading: str = "") -> Chart:
    """Grouped bars: one group per category, one bar per series (gid `bar_gid(series, category)`) from a zero
    baseline; a legend naming the series above the plot where there are several (or where `legend` says so)."""
    matplotlib = _matplotlib()
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch
    from matplotlib.ticker import PercentFormatter

    tips = {}
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(WIDTH, HEIGHT), layout="constrained")
        axes = figure.add_subplot()
        width = 0.8 / max(len(series), 1)
        for s, one in enumerate(series):
            drawn = [c for c, value in enumerate(one.values) if _drawn(value)]
            bars = axes.bar([c - 0.4 + (s + 0.5) * width for c in drawn], [one.values[c] for c in drawn],
                            width * 0.9, color=COLORS[one.color % len(COLORS)])
            for c, bar in zip(drawn, bars):
                bar.set_gid(bar_gid(s, c))
                tips[bar_gid(s, c)] = (f"{one.label} · {x_label} {categories[c]}: "
                                       f"{_value_text(one.values[c], percent)}")
        largest = max((v for one in series for v in one.values if _drawn(v)), default=0.0)
        axes.set_ylim(0, largest * 1.08 if largest > 0 else 1.0)
        axes.set_xlim(-0.6, len(categories) - 0.4)
        _category_axis(axes.set_xticks, categories)
        if percent:
            axes.yaxis.set_major_formatter(PercentFormatter(1.0))
        axes.yaxis.grid(True, color="#e5e7eb")
        axes.set_axisbelow(True)
        axes.set_xlabel(_plain(x_label))
        axes.set_ylabel(_plain(y_label))
        if (legend if legend is not None else len(series) > 1) and series:  # handles given: no label is skipped
            figure.legend([Patch(color=COLORS[one.color % len(COLORS)]) for one in series],
                          [_plain(_short(one.label)) for one in series], loc="outside upper center",
                          ncols=min(len(series), 3))
    return Chart(heading, figure, tips)


def heatmap_figure(columns: list[str], rows: list[str], values: list[list[float | None]],
                   column_label: str = "layer", row_label: str = "expert", color_label: str = "",
                   percent: bool = True, heading: str = "") -> Chart:
    """A grid of cells, values[column][row] (gid `cell_gid(column, row)`), coloured on one scale from 0 to the
    largest value, with its colour bar; small grids print each value in its cell."""
    matplotlib = _matplotlib()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    tips = {}
    cells = [(j, i, v) for j, column in enumerate(values) for i, v in enumerate(column) if _drawn(v)]
    largest = max((v for *_, v in cells), default=0.0) or 1.0
    scale = ScalarMappable(Normalize(0, largest), matplotlib.colormaps["viridis"])
    with matplotlib.rc_context(STYLE):
        figure = Figure(figsize=(WIDTH, max(2.2, 0.9 + 0.24 * len(rows))), layout="constrained")
        axes = figure.add_subplot()
        annotate = len(columns) * len(rows) <= 64
        for j, i, value in cells:
            color = scale.to_rgba(value)
            axes.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor=color, edgecolor="white", linewidth=0.6,
                                     gid=cell_gid(j, i)))
            tips[cell_gid(j, i)] = (f"{column_label} {columns[j]}, {row_label} {rows[i]}: "
                                    f"{_value_text(value, percent)}")
            if annotate:
                dark = 0.2126 * color[0] + 0.7152 * color[1] + 0.0722 * color[2] < 0.5
                axes.text(j, i, f"{value * 100:.1f}%" if percent else f"{value:.3g}", ha="center", va="center",
                          fontsize=7, color="white" if dark else "black")
        axes.set_xlim(-0.5, len(columns) - 0.5)
        axes.set_ylim(len(rows) - 0.5, -0.5)  # row 0 on top, as in a table
        _category_axis(axes.set_xticks, columns)
        _category_axis(axes.set_yticks, rows)
        axes.tick_params(length=0)
        for spine in axes.spines.values():
            spine.set_visible(False)
        axes.set_xlabel(_plain(column_label))
        axes.set_ylabel(_plain(row_label))
        steps = [largest * k / COLOR_STEPS for k in range(COLOR_STEPS + 1)]
        bar = figure.colorbar(scale, ax=axes, label=_plain(color_label), fraction=0.05, pad=0.02, boundaries=steps,
                              ticks=MaxNLocator(5), format=PercentFormatter(1.0) if percent else None)
        bar.solids.set_rasterized(False)  # vector like the rest, no embedded bitmap (in steps: a small file)
    return Chart(heading, figure, tips)
