"""`compress report`: the HTML report of one or more runs (compress.html_report)."""
from __future__ import annotations

from typing import List

import typer

from compress.cli.common import exit_codes, out

__all__ = ["report", "EXAMPLES"]

EXAMPLES = """Examples:

\b
  compress report ./llama-2of4                                # ./report.html
  compress report ./llama-2of4 ./llama-6of8 --out cmp.html    # two runs side by side
"""


def report(
    runs: List[str] = typer.Argument(..., metavar="DIR", help="Output folders of compress jobs (each holds "
                                     "report.json), or report.json files; one column each."),
    out_file: str = typer.Option("report.html", "--out", "-o", help="The HTML file to write."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it is a report compress wrote (its "
                               "marker); another program's file is never replaced."),
) -> None:
    """One self-contained HTML page from report.json: summary, metrics per stage, gates, timings and per-layer
    charts (no script, no external resource)."""
    with exit_codes(flag_of=lambda key: "--out" if key == "out" else None):
        from compress.html_report import write_report_html

        path = write_report_html(runs, out_file, force)
        out.print(f"wrote {path}")
