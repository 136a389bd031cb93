"""Reading report.json for the HTML report: a run's folder (or the file itself), checked against the committed
JSON Schema before anything is drawn from it."""
from __future__ import annotations

import json
from pathlib import Path

from compress.errors import BadInput
from compress.pipeline.run_report import REPORT_FILE, SCHEMA_VERSION

__all__ = ["load_report", "report_path"]

SCHEMA_NAME = "compress-report"


def report_path(given: str | Path) -> Path:
    """`given`'s report.json: a folder holding one, or the file itself."""
    from compress.paths import user_path

    path = user_path(given)
    if path.is_dir():
        path = path / REPORT_FILE
        if not path.is_file():
            raise BadInput(f"{given}: no {REPORT_FILE} in this folder (every job with an output folder writes one)")
        return path
    if not path.exists():
        raise BadInput(f"{given}: no such folder or file")
    return path


def _read(path: Path, given) -> dict:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))  # Infinity: a non-finite perplexity
    except OSError as exc:
        raise BadInput(f"{given}: cannot read {path.name} ({exc.strerror or exc})") from exc
    except UnicodeDecodeError:
        raise BadInput(f"{given}: {path.name} is not UTF-8 text") from None
    except ValueError as exc:
        raise BadInput(f"{given}: {path.name} is not JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA_NAME:
        raise BadInput(f"{given}: {path.name} is not a compress report (no \"schema\": \"{SCHEMA_NAME}\")")
    return document


def _check_version(document: dict, given, name: str) -> None:
    version = document.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BadInput(f"{given}: {name} has no integer schema_version")
    if version > SCHEMA_VERSION:
        raise BadInput(f"{given}: {name} has schema_version {version}, written by a newer compress; this one reads "
                       f"version {SCHEMA_VERSION} and older: upgrade compress to read it")


def _short(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _validate(document: dict, given, name: str) -> None:
    try:
        import jsonschema
    except ImportError:
        raise BadInput("compress report checks report.json with jsonschema: pip install 'compress[report]'") from None
    from compress.pipeline.report_schema import SCHEMA_PATH

    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        where = error.json_path if error.absolute_path else "the top level"
        raise BadInput(f"{given}: {name} does not match the report schema v{SCHEMA_VERSION} at {where}: "
                       f"{_short(error.message)}")


def load_report(given: str | Path) -> dict:
    """The report of `given` (a job's output folder or its report.json), validated; BadInput (one line) if it
    is missing, unreadable, not a report, from a newer schema or not valid against the schema."""
    path = report_path(given)
    name = path.name
    document = _read(path, given)
    _check_version(document, given, name)
    _validate(document, given, name)
    return document
