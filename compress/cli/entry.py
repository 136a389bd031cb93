"""The console entry point: Typer's app, with usage errors as one plain line on stderr (exit 2)."""
from __future__ import annotations

import sys


def _click_errors() -> tuple[type, ...]:
    """The exception bases of whichever click the installed typer runs on (newer typers carry their own)."""
    import typer

    bases = [getattr(typer, "TyperException", None)]
    try:
        import click

        bases.append(click.ClickException)
    except ImportError:
        pass
    return tuple(base for base in bases if isinstance(base, type))


def main(argv: list[str] | None = None) -> None:
    from compress.cli import app

    try:
        code = app(args=argv, prog_name="compress", standalone_mode=False)
    except _click_errors() as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # the help is already printed
            sys.exit(error.exit_code)
        context = getattr(error, "ctx", None)
        hint = f" (see {context.command_path} --help)" if context is not None else ""
        sys.stderr.write(f"error: {' '.join(error.format_message().split())}{hint}\n")
        sys.exit(error.exit_code)
    except Exception as error:
        if type(error).__name__ != "Abort":
            raise
        sys.stderr.write("aborted\n")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
