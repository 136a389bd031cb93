"""The `meta` block every benchmark writes into its result JSON: commit, command, versions, machine, date."""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("commit", "dirty", "command", "versions", "machine", "date")


def _code_root() -> Path:
    """The checkout whose compress/ package is imported: its commit is the code that ran."""
    try:
        import compress

        return Path(compress.__file__).resolve().parent.parent
    except ImportError:
        return ROOT


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=_code_root(), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def command(argv: list[str] | None = None) -> str:
    """The command line as run from the repository root (script path made relative to it)."""
    argv = list(sys.argv if argv is None else argv)
    if argv and os.path.isabs(argv[0]) and Path(argv[0]).resolve().is_relative_to(ROOT):
        argv[0] = str(Path(argv[0]).resolve().relative_to(ROOT))
    return shlex.join(["python", *argv])


def versions() -> dict:
    import torch
    import transformers

    import compress

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "compress": compress.__version__}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"platform": platform.platform(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
            "gpu": gpus[0] if gpus else None, "gpu_count": len(gpus), "cuda": torch.version.cuda if gpus else None}


def meta(argv: list[str] | None = None) -> dict:
    """Call at the start of a run. `dirty`: compress/ or a benchmarks/ script had uncommitted changes."""
    status = _git("status", "--porcelain", "--", "compress", "benchmarks/*.py")
    return {"commit": _git("rev-parse", "HEAD"), "dirty": None if status is None else bool(status),
            "command": command(argv), "versions": versions(), "machine": machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
