"""The typed setting every command and stage takes for zero-shot tasks."""
from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

__all__ = ["TaskNames"]


def _names(value: list[str]) -> list[str]:
    if any(not task.strip() for task in value):
        raise ValueError("task names must be non-empty")
    if len(set(value)) < len(value):
        raise ValueError("a task is named twice")
    return value


TaskNames = Annotated[list[str], Field(min_length=1), AfterValidator(_names)]
"""Zero-shot task names: persuasion_next_sentence (offline) or lm-eval's own; at least one, each once."""
