"""What every command shares: exit codes, consoles that never read user text as markup, progress, and
the names of flags for config keys."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.text import Text

__all__ = ["err", "out", "exit_codes", "progress", "print_json", "error_line"]

err = Console(stderr=True, markup=False, highlight=False, emoji=False)
out = Console(markup=False, highlight=False, emoji=False)


def error_line(prefix: str, message: str) -> None:
    """One line on stderr; `message` is shown as plain text, whatever brackets it holds."""
    err.print(Text.assemble((prefix, "red"), " ", message), soft_wrap=True)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


@contextmanager
def exit_codes(flag_of=None):
    """Bad input: one line, exit 2. A breached quality gate: one line per gate, exit 3. Anything else: one
    line, exit 1 (traceback with COMPRESS_DEBUG=1).
    `flag_of(key)` names the flag behind a config key in errors raised after validation."""
    from compress.errors import BadInput
    from compress.pipeline.gates import GateBreach, breach_line

    try:
        _quiet_libraries()
        yield
    except GateBreach as breach:  # the outputs and report.json are written and mark the breach
        for outcome in breach.outcomes:
            error_line("error:", breach_line(outcome))
        raise typer.Exit(3)
    except BadInput as exc:
        flag = flag_of(exc.key) if flag_of and exc.key else None
        error_line("error:", f"{flag}: {exc}" if flag else str(exc))
        raise typer.Exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130)
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        from compress.defaults.assets import AssetError

        if isinstance(exc, AssetError):
            error_line("error:", str(exc))
            raise typer.Exit(2)
        if os.environ.get("COMPRESS_DEBUG"):
            raise
        error_line("internal error:", f"{type(exc).__name__}: {exc}")
        raise typer.Exit(1)


@contextmanager
def progress(quiet: bool):
    """Progress over decoder layers (stderr) with stage messages; yields a pipeline Progress. On a terminal a
    rich bar; elsewhere (CI logs, pipes) one plain timestamped line per stage and per layer."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from compress.pipeline.session import Progress as Hooks

    if quiet:
        yield Hooks()
        return
    if not err.is_terminal:  # a CI log: plain timestamped lines, no bar, no ANSI
        yield Hooks(stage=lambda message: _plain_line(message),
                    layer=lambda step, total: _plain_line(f"({step.index + 1}/{total}) {step.name}"
                                                          + (f" {step.info['note']}" if step.info.get("note") else "")))
        return
    bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=err, transient=True)
    tasks: dict = {}

    def stage(message: str) -> None:
        tasks.pop("layers", None)
        bar.console.print(Text.assemble(("•", "dim"), " ", message))

    def layer(step, total: int) -> None:
        if "layers" not in tasks:
            tasks["layers"] = bar.add_task("layers", total=total)
        bar.update(tasks["layers"], advance=1, description=f"({step.index + 1}/{total}) {step.name}")
        if step.info.get("note"):
            bar.console.print(Text(f"({step.index + 1}/{total}) {step.name} {step.info['note']}"))

    with bar:
        yield Hooks(stage=stage, layer=layer)


def _plain_line(message: str) -> None:
    import datetime
    import sys

    stamp = datetime.datetime.now().astimezone().strftime("%H:%M:%S")
    print(f"{stamp} {message}", file=sys.stderr, flush=True)


def print_json(data) -> None:
    print(json.dumps(data, indent=2))
