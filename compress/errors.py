"""Errors that the CLI turns into one clear line and an exit code."""


class BadInput(ValueError):
    """The user gave something we cannot work with (exit code 2)."""
