"""Help text is never read as rich markup: every bracketed word of the source help reaches the output,
and without a TTY the output holds no ANSI escape codes."""
import re

import pytest
import typer
from typer.testing import CliRunner

from compress.cli import app

runner = CliRunner()
BRACKETED = re.compile(r"\[:?[A-Za-z][A-Za-z:_-]*\]")


def _commands(command, path: tuple = ()):
    yield path, command
    for name, sub in (getattr(command, "commands", None) or {}).items():
        yield from _commands(sub, path + (name,))


def _source_help(command) -> str:
    parts = [command.help or "", command.epilog or ""]
    parts += [getattr(param, "help", None) or "" for param in command.params]
    return "\n".join(parts)


COMMANDS = list(_commands(typer.main.get_command(app)))


@pytest.mark.parametrize("path", [path for path, _ in COMMANDS], ids=lambda path: " ".join(path) or "compress")
def test_help_keeps_bracketed_words_and_has_no_ansi(path):
    command = dict(COMMANDS)[path]
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "\x1b[" not in result.output
    flat = " ".join(result.output.split())
    for word in BRACKETED.findall(_source_help(command)):
        assert word in flat, f"{word} lost from `compress {' '.join(path)} --help`"


def test_some_help_has_brackets_to_keep():
    assert any(BRACKETED.search(_source_help(command)) for _, command in COMMANDS)
    graph = runner.invoke(app, ["graph", "--help"]).output
    assert "pip install 'compress[graph]'" in " ".join(graph.split())
