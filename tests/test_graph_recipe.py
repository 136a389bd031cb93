"""Graph recipes (`kind: graph`): `compress run` prunes a GraphGPS as `compress graph prune` does (the same
library job: the same weights bit for bit), every shipped graph recipe runs and its report holds against the
saved checkpoint, a dry run pipes back into run, and bad graph recipes exit 2 naming file, line and key."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch_geometric")
pytest.importorskip("grakel")

from typer.testing import CliRunner  # noqa: E402

from compress.cli import app  # noqa: E402

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
GRAPH_RECIPES = [r for r in RECIPES if (yaml.safe_load(r.read_text()) or {}).get("kind") == "graph"]
runner = CliRunner()


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small GraphGPS trained for 10 epochs on MUTAG (so a fine-tune may run 1 epoch)."""
    out = tmp_path_factory.mktemp("graph") / "gps"
    result = invoke("graph", "train", "--data", "mutag", "--epochs", 10, "--channels", 16, "--layers", 2, "--heads", 2,
                    "--device", "cpu", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    return out


def small(**stage) -> list[str]:
    sets = ["device=cpu", "calibration_graphs=64"] + [f"graph_prune.{k}={v}" for k, v in stage.items()]
    return [arg for s in sets for arg in ("--set", s)]


def test_graph_recipes_are_shipped():
    assert GRAPH_RECIPES


def recomputed_test_loss(out: Path) -> float:
    import torch

    from compress.graph.checkpoint import load_graph_model
    from compress.graph.data import load_graphs
    from compress.graph.train import batches

    model = load_graph_model(out)
    test = batches(load_graphs("mutag").test, 64)
    with torch.no_grad():
        total = sum(torch.nn.functional.cross_entropy(model(b), b.y, reduction="sum").item() for b in test)
    return total / sum(b.num_graphs for b in test)


@pytest.mark.parametrize("recipe", GRAPH_RECIPES, ids=[r.stem for r in GRAPH_RECIPES])
def test_shipped_graph_recipe_runs_and_its_report_holds(recipe, checkpoint, tmp_path):
    from compress.graph.checkpoint import load_graph_model

    out = tmp_path / "out"
    result = invoke("run", recipe, checkpoint, "--out", out, "--json", "-q", *small())
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "graph" and report["out"] == str(out) and report["recipe"]["model"] == str(checkpoint)
    (stage,) = report["stages"]
    settings = yaml.safe_load(recipe.read_text())["stages"][0]["graph_prune"]
    pruned, reference = stage["result"]["pruned"], stage["result"]["reference"]
    model = load_graph_model(out)
    heads_before = load_graph_model(checkpoint).config.heads
    assert model.config.heads == stage["result"]["heads"]
    assert [before - after for before, after in zip(heads_before, model.config.heads)] == \
        [round(settings.get("heads", 0) * h) for h in heads_before]
    assert model.config.token_keep == stage["result"]["token_keep"] == 1 - settings.get("tokens", 0)
    assert pruned["loss"] == pytest.approx(recomputed_test_loss(out), abs=1e-5)  # the saved model is the one measured
    assert 0 <= pruned["accuracy"] <= 1 and pruned["structural_flops"] < reference["structural_flops"]
    assert pruned["nonzero_flops"] <= pruned["structural_flops"]
    manifest = json.loads((out / "compression.json").read_text())
    assert manifest["kind"] == "graph-prune" and manifest["recipe"] == report["recipe"]


def test_recipe_and_graph_prune_share_the_job(checkpoint, tmp_path):
    """The same settings through `compress run` and `compress graph prune`: identical saved weights and metrics."""
    recipe = tmp_path / "g.yaml"
    recipe.write_text(f"kind: graph\nmodel: {checkpoint}\ncalibration_graphs: 64\ndevice: cpu\nstages:\n"
                      "  - graph_prune: {heads: 0.5, tokens: 0.5, layers: 0.5, weight_pattern: '2:4', "
                      "weight_method: wanda, finetune_epochs: 1, seed: 3}\n"
                      f"out: {tmp_path / 'via-run'}\n")
    via_run = invoke("run", recipe, "--json", "-q")
    assert via_run.exit_code == 0, via_run.output
    direct = invoke("graph", "prune", checkpoint, "--heads", 0.5, "--tokens", 0.5, "--layers", 0.5, "--weight-pattern",
                    "2:4", "--weight-method", "wanda", "--finetune-epochs", 1, "--seed", 3, "--calibration-graphs", 64,
                    "--device", "cpu", "--out", tmp_path / "direct", "--json", "-q")
    assert direct.exit_code == 0, direct.output
    assert (tmp_path / "via-run" / "model.safetensors").read_bytes() == \
        (tmp_path / "direct" / "model.safetensors").read_bytes()
    job, (stage,) = json.loads(direct.stdout), json.loads(via_run.stdout)["stages"]
    for key in ("reference", "pruned", "heads", "token_keep", "layers_removed", "calibration_loss_after"):
        assert stage["result"][key] == job[key], key


def test_dry_run_pipes_back_into_run(checkpoint, tmp_path):
    recipe = GRAPH_RECIPES[0]
    dry = invoke("run", recipe, checkpoint, "--out", tmp_path / "o", "--dry-run", *small(heads=0.0, tokens=0.25))
    assert dry.exit_code == 0 and not (tmp_path / "o").exists(), dry.output
    resolved = yaml.safe_load(dry.stdout)
    assert resolved["kind"] == "graph" and resolved["stages"][0]["graph_prune"]["tokens"] == 0.25
    piped = invoke("run", "-", "--json", "-q", input=dry.stdout)
    assert piped.exit_code == 0, piped.output
    assert json.loads(piped.stdout)["stages"][0]["result"]["token_keep"] == 0.75


# name: (recipe body after `model`, line the message names, text it contains)
BAD = {
    "fraction": ("stages:\n  - graph_prune:\n      heads: 1.0\n", 5, "stages[0].graph_prune.heads"),
    "unknown key": ("stages:\n  - graph_prune:\n      hedas: 0.5\n", 5, "unknown key (valid: name, tokens"),
    "method": ("stages:\n  - graph_prune: {weight_method: obs}\n", 4, "stages[0].graph_prune.weight_method"),
    "both": ("stages:\n  - graph_prune: {weights: 0.5, weight_pattern: '2:4'}\n", 4, "not both"),
    "lm stage": ("stages:\n  - prune: {}\n", 4, "unknown stage 'prune': choose one of graph_prune"),
    "lm key": ("calibrate: {}\nstages:\n  - graph_prune: {}\n", 3, "calibrate: unknown key"),
    "two stages": ("stages:\n  - graph_prune: {}\n  - graph_prune: {name: b}\n", 5, "one graph_prune stage"),
    "lr": ("stages:\n  - graph_prune: {finetune_lr: 2.0}\n", 4, "finetune_lr"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_graph_recipe_exits_2_naming_file_line_and_key(case, checkpoint, tmp_path, monkeypatch):
    body, line, needle = BAD[case]
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(f"kind: graph\nmodel: {checkpoint}\n{body}out: ./o\n")
    result = invoke("run", recipe)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert f"bad.yaml:{line}:" in lines[0] and needle in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_missing_checkpoint_and_unknown_kind(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"kind: graph\nmodel: {tmp_path / 'none'}\nstages:\n  - graph_prune: {{}}\n")
    result = invoke("run", recipe)
    assert result.exit_code == 2 and "r.yaml:2: model:" in result.output and "no such checkpoint" in result.output
    recipe.write_text("kind: grpah\nstages:\n  - graph_prune: {}\n")
    result = invoke("run", recipe)
    assert result.exit_code == 2 and "r.yaml:1: kind: unknown recipe kind 'grpah'" in result.output


def test_unmeasured_gate_and_resume_are_refused_for_graph_recipes(checkpoint, tmp_path):
    recipe = GRAPH_RECIPES[0]
    for flag, words in ((["--gate", "ppl_ratio<=1.3"], "--gate: gate ppl_ratio<=1.3: this job does not measure"),
                        (["--resume"], "--resume: a graph recipe runs in one step")):
        result = invoke("run", recipe, checkpoint, "--out", tmp_path / "o", *flag)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {words}"), result.output
        assert not (tmp_path / "o").exists()


def test_graph_gates_pass_or_breach_with_everything_written(checkpoint, tmp_path):
    recipe = GRAPH_RECIPES[0]
    passed = invoke("run", recipe, checkpoint, "--out", tmp_path / "a", "-q", *small(), "--gate", "flops_ratio<=1")
    assert passed.exit_code == 0, passed.output
    record = json.loads((tmp_path / "a" / "report.json").read_text())
    assert record["gates_passed"] and record["recipe"]["gates"] == ["flops_ratio<=1.0"]
    pruned, reference = record["stages"][0]["result"]["pruned"], record["stages"][0]["result"]["reference"]
    assert record["gates"][0]["measured"] == pruned["nonzero_flops"] / reference["nonzero_flops"]

    breached = invoke("run", recipe, checkpoint, "--out", tmp_path / "b", "-q", *small(), "--gate", "recovery>=2")
    assert breached.exit_code == 3 and breached.stderr.startswith("error: gate breached: recovery "), breached.output
    record = json.loads((tmp_path / "b" / "report.json").read_text())
    assert not record["gates_passed"] and (tmp_path / "b" / "model.safetensors").is_file()
