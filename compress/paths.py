"""Paths the user typed."""
from __future__ import annotations

from pathlib import Path

__all__ = ["user_path"]


def user_path(text: str | Path) -> Path:
    """`text` with a leading ~ expanded; `~name` of a user this machine does not know stays as typed."""
    try:
        return Path(text).expanduser()
    except RuntimeError:
        return Path(text)
