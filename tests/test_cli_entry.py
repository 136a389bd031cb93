"""The installed `compress` command: usage errors (unknown option or command, missing or unparsable value)
end in one plain line on stderr and exit 2, as bad values do; help and --version still exit 0."""
import subprocess
import sys

import pytest

ENTRY = "from compress.cli.entry import main; main()"


def compress(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", ENTRY, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [
    ("prune", "--bogus"),
    ("prune", "--pattern"),
    ("no-such-command",),
    ("prune", "--nsamples", "abc"),
    ("eval", "--eval-tokens", "[/x]"),
    ("prune", "--pattern", "[bold]2:4[/bold]"),
])
def test_usage_errors_are_one_line(args):
    done = compress(*args)
    assert done.returncode == 2, done
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "Traceback" not in done.stderr and "╭" not in done.stderr


def test_markup_in_a_value_is_printed_as_written():
    done = compress("prune", "--pattern", "[bold]2:4[/bold]")
    assert "[bold]2:4[/bold]" in done.stderr


def test_help_and_version_exit_zero():
    assert compress("--version").stdout.startswith("compress ")
    done = compress("prune", "--help")
    assert done.returncode == 0 and "--method" in done.stdout
