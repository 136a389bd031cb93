"""The `meta` block every benchmark writes into its result JSON: commit, command, versions, machine, date."""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from compress.provenance import run_meta

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("commit", "dirty", "command", "versions", "machine", "date")


def command(argv: list[str] | None = None) -> str:
    """The command line as run from the repository root (script path made relative to it)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and os.path.isabs(argv[0]) and Path(argv[0]).resolve().is_relative_to(ROOT):
        argv[0] = str(Path(argv[0]).resolve().relative_to(ROOT))
    return shlex.join(["python", *argv])


def meta(argv: list[str] | None = None) -> dict:
    """Call at the start of a run. `dirty`: compress/ or a benchmarks/ script had uncommitted changes."""
    return run_meta(command(argv), dirty_paths=("compress", "benchmarks/*.py"))
