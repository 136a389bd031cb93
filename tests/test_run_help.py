"""`compress run --help` lists every recipe key: each session kind's top-level keys, the calibrate keys and
every registered stage kind's settings with type and default, generated from the configs (a stage registered
later appears without any change to the help), in plain text."""
from __future__ import annotations

from typing import Literal, get_args, get_origin

import pytest
from typer.testing import CliRunner

from compress.cli import app
from compress.config import StrictConfig
from compress.pipeline.recipe_help import default_text, type_text
from compress.pipeline.registry import SESSION_STAGES, StageSpec

runner = CliRunner()


def run_help() -> str:
    result = runner.invoke(app, ["run", "--help"])
    assert result.exit_code == 0, result.output
    assert "\x1b[" not in result.output
    return result.output


def sections(text: str) -> dict[str, list[str]]:
    """The help's sections: a heading at the margin ending in ':', then its indented lines."""
    found, current = {}, None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = found.setdefault(line[:-1], [])
        elif current is not None and line.strip():
            current.append(line.strip())
    return found


def entry(name: str, info) -> str:
    """How the help names a key: `name: type = default`, `name: type (required)`, or `kind: graph`."""
    text = f"{name}: {type_text(info.annotation)}"
    if get_origin(info.annotation) is Literal and len(get_args(info.annotation)) == 1:
        return text
    default = default_text(info)
    return text + (" (required)" if default is None else f" = {default}")


def configs():
    """(the heading of its section, config, keys not listed) of every config a recipe is made of."""
    from compress.calibrate.config import CalibrateConfig
    from compress.pipeline.graph_session import GraphRecipe
    from compress.pipeline.recipe import Recipe

    yield "Recipe keys (", Recipe, ()
    yield "calibrate keys", CalibrateConfig, ()
    yield "Graph recipe keys (kind: graph)", GraphRecipe, ()
    for session, stages in SESSION_STAGES.items():
        for kind, spec in stages.items():
            yield f"Stage {kind}{' (graph recipes)' if session == 'graph' else ''}: ", spec.config, ("kind",)


def test_every_stage_kind_and_key_is_listed_with_type_and_default():
    found = sections(run_help())
    kinds = [kind for stages in SESSION_STAGES.values() for kind in stages]
    assert {"prune", "eval", "export", "factorize", "attention", "graph_prune"} <= set(kinds)
    checked = 0
    for heading, config, skip in configs():
        (rows,) = [rows for title, rows in found.items() if title.startswith(heading)]
        for name, info in config.model_fields.items():
            if name not in skip:
                assert any(row.startswith(entry(name, info)) for row in rows), f"{heading}: {entry(name, info)}"
                checked += 1
    assert checked > 60


def test_descriptions_are_the_configs_docstrings():
    flat = " ".join(run_help().split())
    from compress.pipeline.stages.prune import PruneStage

    assert " ".join(PruneStage.model_fields["damp"].description.split()) in flat
    assert "sparsity: float | null = null" in flat and "format: hf|compressed = hf" in flat
    assert "channel_file: str (required)" in flat and "weight_method: magnitude|wanda|ria|sparsegpt" in flat


class _Planted(StrictConfig):
    kind: Literal["planted"] = "planted"
    name: str | None = None
    zqxv_width: int = 7
    """Planted by a test [bracketed words stay]."""


def test_a_stage_registered_later_is_listed(monkeypatch):
    monkeypatch.setitem(SESSION_STAGES["llm"], "planted", StageSpec(kind="planted", config=_Planted, run=None,
                                                                   summary="a test's stage"))
    flat = " ".join(run_help().split())
    assert "Stage planted: a test's stage" in flat
    assert "zqxv_width: int = 7 Planted by a test [bracketed words stay]." in flat


@pytest.mark.parametrize("annotation, text", [(int, "int"), (str | None, "str | null"), (list[str], "list of str"),
                                              (Literal["a", "b"], "a|b"), (dict[str, int] | None, "mapping | null")])
def test_type_text(annotation, text):
    assert type_text(annotation) == text
