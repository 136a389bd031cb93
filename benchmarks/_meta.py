"""The `meta` block every benchmark writes into its result JSON: commit, command, versions, machine, date."""
from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

from compress.provenance import run_meta

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("commit", "dirty", "command", "versions", "machine", "date")
# Scripts renamed since results were stored: their old name shadowed an installed distribution.
RENAMED = {"kernels": "sparse_gemm"}
SCRIPT = re.compile(r"^python3? (?:-m benchmarks\.(\w+)|(?:\S*/)?(\w+)\.py)(?= |$)")


def command(argv: list[str] | None = None) -> str:
    """The command line as run from the repository root: `python -m benchmarks.NAME ARGS`."""
    argv = list(sys.argv if argv is None else argv)
    if argv and Path(argv[0]).resolve().parent == ROOT / "benchmarks":
        return shlex.join(["python", "-m", f"benchmarks.{Path(argv[0]).stem}", *argv[1:]])
    return shlex.join(["python", *argv])


def script_name(recorded: str) -> str | None:
    """The benchmark module a stored command ran, under its name today (None if it ran no script of ours)."""
    match = SCRIPT.match(recorded)
    if not match:
        return None
    name = match.group(1) or match.group(2)
    return RENAMED.get(name, name)


def invocation(recorded: str) -> str:
    """A stored command as it is run today: older results recorded `python benchmarks/NAME.py ...`."""
    name = script_name(recorded)
    return recorded if name is None else SCRIPT.sub(f"python -m benchmarks.{name}", recorded, count=1)


def meta(argv: list[str] | None = None) -> dict:
    """Call at the start of a run. `dirty`: compress/ or a benchmarks/ script had uncommitted changes."""
    return run_meta(command(argv), dirty_paths=("compress", "benchmarks/*.py"))
