"""The HTML page: one self-contained file (inline CSS and SVG; no script, no external resource), one column
per run in every table, the charts as matplotlib's SVG. Every string from a report is escaped."""
from __future__ import annotations

import json
from html import escape

from compress.export.marker import HTML_META
from compress.html_report import rows as R
from compress.html_report.plots import Chart, kept_token_chart, layer_charts, timing_chart

__all__ = ["render_html", "column_labels"]

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f; margin: 24px auto;
       max-width: 1200px; padding: 0 16px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #ddd; }
h3 { font-size: 15px; margin: 18px 0 6px; }
table.runs { border-collapse: collapse; margin: 6px 0 12px; }
table.runs th, table.runs td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
table.runs thead th { background: #f3f4f6; }
table.runs tbody th { font-weight: normal; color: #444; background: #fafafa; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; word-break: break-all; }
td.pass { color: #05603a; background: #e8f7ee; } td.breach { color: #a10b0b; background: #fdecec; font-weight: 600; }
td.missing { color: #999; }
.note { color: #555; margin: 4px 0; } .charts { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0 0 10px; border: 1px solid #e5e7eb; background: #fff; }
figcaption { font-weight: 600; padding: 6px 10px 0; max-width: 520px; overflow-wrap: anywhere; }
svg.chart { display: block; max-width: 100%; height: auto; }
pre { background: #f6f8fa; padding: 8px; overflow-x: auto; font-size: 12px; }
"""


EVAL_NOTE = ('<p class="note">Perplexity <em>before</em> is the model as loaded (dense), <em>after</em> the model '
             "after the stages before that eval stage; recovery is accuracy after / before.</p>")


def column_labels(given: list[str]) -> list[str]:
    """The run names as given, with #2, #3 ... on repeats so that every column is told apart."""
    seen: dict[str, int] = {}
    labels = []
    for name in given:
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name} #{seen[name]}")
    return labels


def _table(table_id: str, labels: list[str], rows: list[R.Row]) -> str:
    head = "".join(f'<th scope="col">{escape(label)}</th>' for label in labels)
    body = []
    for row in rows:
        cells = "".join(f'<td class="{cell.kind}"' + (f' title="{escape(cell.title)}"' if cell.title else "")
                        + f">{escape(cell.text)}</td>" for cell in row.cells)
        body.append(f'<tr><th scope="row">{escape(row.label)}</th>{cells}</tr>')
    return (f'<table class="runs" id="{table_id}"><thead><tr><th scope="col"></th>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _charts(charts: list[Chart], section: str) -> str:
    """The charts of one section; each SVG's ids start with the section and the chart's place (unique in the page)."""
    return '<div class="charts">' + "".join(
        f'<figure aria-label="{escape(c.heading)}"><figcaption>{escape(c.heading)}</figcaption>'
        f'{c.svg(f"{section}{number}-")}</figure>' for number, c in enumerate(charts)) + "</div>"


def _recipes(reports: list[dict], labels: list[str]) -> str:
    return "".join(f"<details><summary>{escape(label)}</summary><pre>"
                   f"{escape(json.dumps(report.get('recipe', {}), indent=2, ensure_ascii=False))}</pre></details>"
                   for report, label in zip(reports, labels))


def render_html(reports: list[dict], names: list[str]) -> str:
    """The HTML report of `reports` (report.json documents, already validated), one column per run, headed by
    `names` (the folders as given)."""
    from compress.version import __version__

    labels = column_labels(names)
    gates = R.merge([R.gate_rows(r) for r in reports])
    named = R.merge([R.named_metric_rows(r) for r in reports])
    evaluated = any(s["kind"] == "eval" for r in reports for s in r["stages"])
    layers = layer_charts(reports, labels)
    kept = kept_token_chart(reports, labels)
    runs = f"{len(reports)} run{'s' if len(reports) != 1 else ''}"
    sections = [
        f"<header><h1>compress report</h1><p class=\"note\">{runs}, one column each; "
        f"written by compress {escape(__version__)} from each run's report.json</p></header>",
        '<section id="summary"><h2>Summary</h2>'
        + _table("summary-table", labels, R.merge([R.summary_rows(r) for r in reports])) + "</section>",
        '<section id="metrics"><h2>Metrics per stage</h2>' + (EVAL_NOTE if evaluated else "")
        + _table("metrics-table", labels, R.merge([R.metric_rows(r) for r in reports]))
        + "</section>",
        '<section id="gates"><h2>Gates</h2>'
        + (_table("gates-table", labels, gates) if gates else '<p class="note">No gates were set.</p>')
        + (f'<h3>Named metrics (what a gate may name)</h3>{_table("named-metrics-table", labels, named)}'
           if named else "") + "</section>",
        '<section id="timings"><h2>Timings (seconds)</h2>'
        + _table("timings-table", labels, R.merge([R.timing_rows(r) for r in reports])
                 + R.merge([R.total_rows(r) for r in reports]))
        + _charts(timing_chart(reports, labels), "timings") + "</section>",
        '<section id="layers"><h2>Per layer</h2>'
        + (_charts(layers, "layers") if layers else '<p class="note">No stage measured per layer.</p>') + "</section>",
    ]
    if kept:
        sections.append('<section id="double-sparsity"><h2>Double Sparsity</h2>' + _charts(kept, "kept") + "</section>")
    sections.append('<section id="recipes"><h2>Recipes as run</h2>' + _recipes(reports, labels) + "</section>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n" + HTML_META + "\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<title>compress report</title>\n<style>" + STYLE + "</style>\n</head>\n<body>\n"
            + "\n".join(sections) + "\n</body>\n</html>\n")
