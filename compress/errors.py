"""Errors that the CLI turns into one clear line and an exit code."""
from __future__ import annotations


class BadInput(ValueError):
    """The user gave something we cannot work with (exit code 2).

    `key` names the setting at fault in recipe terms (e.g. "prune.targets"); the CLI shows it as its
    flag, a recipe run as the file, line and key.
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key
