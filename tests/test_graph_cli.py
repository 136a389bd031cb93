"""`compress graph train` / `prune` on MUTAG: a round trip through the CLI, and bad input as one line, exit 2,
nothing left behind."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("torch_geometric")
pytest.importorskip("grakel")

from typer.testing import CliRunner  # noqa: E402

from compress.cli import app  # noqa: E402

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("graph") / "gps"
    result = runner.invoke(app, ["graph", "train", "--data", "mutag", "--epochs", "10", "--channels", "16",
                                 "--layers", "2", "--heads", "2", "--device", "cpu", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out


def test_train_then_prune_writes_a_model_that_reloads(checkpoint, tmp_path):
    import torch

    from compress.graph.checkpoint import load_graph_model
    from compress.graph.data import load_graphs
    from compress.graph.train import batches

    out = tmp_path / "pruned"
    result = runner.invoke(app, ["graph", "prune", str(checkpoint), "--tokens", "0.5", "--heads", "0.5", "--layers",
                                 "0.5", "--weights", "0.5", "--finetune-epochs", "1", "--device", "cpu", "--out",
                                 str(out), "--json", "-q"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pruned"]["structural_flops"] < report["reference"]["structural_flops"]
    assert report["pruned"]["nonzero_flops"] < report["pruned"]["structural_flops"]
    model = load_graph_model(out)
    assert sum(h == 0 for h in model.config.heads) == 1 and model.config.token_keep == 0.5
    test = batches(load_graphs("mutag").test, 64)
    with torch.no_grad():  # the saved model is the one measured: same loss as reported
        loss = sum(torch.nn.functional.cross_entropy(model(b), b.y, reduction="sum").item() for b in test) / sum(
            b.num_graphs for b in test)
    assert abs(loss - report["pruned"]["loss"]) < 1e-5
    record = json.loads((out / "report.json").read_text())  # validated against the schema as it was written
    assert record["kind"] == "graph" and record["stages"][0]["kind"] == "graph_prune"
    assert record["metrics"]["loss"] == report["pruned"]["loss"]
    assert record["metrics"]["recovery"] == report["pruned"]["accuracy"] / report["reference"]["accuracy"]
    assert record["metrics"]["flops_ratio"] == report["pruned"]["nonzero_flops"] / report["reference"]["nonzero_flops"]
    assert record["inputs"]["data"]["sha256"] and record["inputs"]["model"]["files"] >= 2


@pytest.mark.parametrize("args, words", [
    (["--heads", "1.0"], "[0, 1)"),
    (["--tokens", "-0.5"], "[0, 1)"),
    (["--layers", "nan"], "[0, 1)"),
    (["--finetune-epochs", "5"], "10%"),
    (["--weights", "0.5", "--weight-pattern", "2:4"], "not both"),
    (["--weight-pattern", "3:7"], "does not divide"),
    (["--weight-method", "obs"], "weight method"),
    (["--data", "nowhere.csv"], "unknown data"),
])
def test_bad_input_is_one_line_and_exit_2(checkpoint, tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["graph", "prune", str(checkpoint), *args, "--out", "o", "-q"])
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_another_architecture_is_refused(tiny_model_dir, tmp_path):
    result = runner.invoke(app, ["graph", "prune", str(tiny_model_dir), "--heads", "0.5"])
    assert result.exit_code == 2 and "not a graph checkpoint" in result.output
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "graph.json").write_text(json.dumps({"architecture": "LlamaForCausalLM"}))
    result = runner.invoke(app, ["graph", "prune", str(fake), "--heads", "0.5"])
    assert result.exit_code == 2 and "is not compress-graphgps" in result.output


def test_bad_csv_is_refused(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("smiles,label\nCCO,1\nCCN,maybe\n")
    result = runner.invoke(app, ["graph", "train", "--data", str(csv), "--epochs", "1"])
    assert result.exit_code == 2 and "line 3" in result.output
