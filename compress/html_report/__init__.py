"""`compress report`: one self-contained HTML page (summary, metrics per stage, gates, timings, per-layer charts)
from the report.json of one or more runs, side by side. Library first: load_report and render_html work on
plain dicts; write_report_html is what the command does."""
from __future__ import annotations

from pathlib import Path

from compress.html_report.load import load_report
from compress.html_report.page import render_html

__all__ = ["load_report", "render_html", "check_html_target", "write_report_html"]


def check_html_target(out: str | Path, force: bool = False) -> Path:
    """Where the page goes, checked before any report is read: an .html file name in a folder that takes new
    files; one already there is replaced only with `force` and only if compress wrote it (its head's marker)."""
    from compress.errors import BadInput
    from compress.export.outputs import check_report_file

    from compress.paths import user_path

    if not user_path(out).is_dir() and user_path(out).suffix.lower() not in (".html", ".htm"):
        raise BadInput(f"{out}: the report is HTML; give a file name ending in .html", key="out")
    path = check_report_file(out, key="out")  # a folder, another program's file, or no way to write: refused
    if (path.exists() or path.is_symlink()) and not force:
        raise BadInput(f"{out} exists (a report compress wrote): --force replaces it", key="out")
    return path


def write_report_html(sources: list[str | Path], out: str | Path = "report.html", force: bool = False) -> Path:
    """Read each run's report.json (a folder or the file), render the page, write it beside `out` and rename it
    into place: nothing is written unless every report is readable and valid."""
    from compress.errors import BadInput
    from compress.export.outputs import staged

    if not sources:
        raise BadInput("give at least one run folder holding report.json")
    path = check_html_target(out, force)
    reports = [load_report(source) for source in sources]
    text = render_html(reports, [str(source) for source in sources])
    with staged() as staging:
        staging.file(path, force=force).write_text(text, encoding="utf-8")
    return path
