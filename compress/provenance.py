"""Where a result came from: the code's commit, library versions, the machine and the time of a run."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

__all__ = ["code_root", "git", "versions", "machine", "now", "run_meta"]


def code_root() -> Path:
    """The checkout (or install) that holds the imported compress package."""
    return Path(__file__).resolve().parent.parent


def git(*args: str) -> str | None:
    """`git ARGS` in the code's checkout; None where it is not one or git is missing."""
    try:
        done = subprocess.run(["git", *args], cwd=code_root(), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def versions() -> dict:
    import torch
    import transformers

    from compress.version import __version__

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "compress": __version__}


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


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run_meta(command: str, dirty_paths: tuple[str, ...] = ("compress",)) -> dict:
    """The meta block of a result file. `dirty`: the paths had uncommitted changes (None: not a checkout).

    COMPRESS_COMMIT (and COMPRESS_DIRTY=0|1) name the code where the checkout's own history is not the code
    that runs, e.g. a copy of a working tree whose .git is older than its files."""
    commit = os.environ.get("COMPRESS_COMMIT")
    if commit:
        dirty = {"0": False, "1": True}.get(os.environ.get("COMPRESS_DIRTY", ""))
    else:
        status = git("status", "--porcelain", "--", *dirty_paths)
        commit, dirty = git("rev-parse", "HEAD"), None if status is None else bool(status)
    return {"commit": commit, "dirty": dirty, "command": command, "versions": versions(), "machine": machine(),
            "date": now()}
