"""The README's two commands (install and run the main job; run the tests) are what CI runs, word for word."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    after = text.split("After cloning, two commands", 1)[1]
    block = re.search(r"```bash\n(.*?)```", after, re.S).group(1)
    return [line.strip() for line in block.splitlines() if line.strip()]


def test_ci_runs_the_readme_commands_exactly():
    commands = readme_commands()
    assert len(commands) == 2 and commands[1] == "python3 -m pytest -q"
    assert "-c constraints.txt" in commands[0]  # the newcomer installs the versions CI tested
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    first = ci.index(commands[0])
    assert ci[first + 1] == commands[1], "CI runs the test command right after the README's first command"
    activated = [i for i, line in enumerate(ci) if re.fullmatch(r'\. "?\S+/bin/activate"?', line)]
    assert activated and activated[0] < first, "CI installs into a fresh virtual environment"
    assert any(line.startswith("python3 -m venv") for line in ci[:activated[0]])


def test_the_lock_pins_every_package_exactly():
    lines = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line and line[0] != "#"]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==\S+", line) for line in lines), lines
    names = {line.split("==")[0].lower() for line in lines}
    assert {"torch", "transformers", "pydantic", "typer", "pytest", "torch-geometric", "triton"} <= names
    assert "compress" not in names
