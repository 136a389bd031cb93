"""Exports written before the pipeline still load: a compressed export made by the commit before it
(tests/data/export-v1: a tiny Llama, Wanda 2:4 with heuristic permutations) gives the logits that commit
computed from it."""
from pathlib import Path

import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import compress
from compress.cli import app

DATA = Path(__file__).parent / "data"


def test_a_compressed_export_from_before_the_pipeline_loads_and_computes_the_same():
    model = compress.load(DATA / "export-v1").eval()
    ids = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert torch.equal(logits, load_file(DATA / "export-v1-logits.safetensors")["logits"])


def test_compress_eval_reads_it(text_file):
    result = CliRunner().invoke(app, ["eval", str(DATA / "export-v1"), "--text", str(text_file), "--context", "32",
                                      "--max-tokens", "128", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output


def test_force_refuses_an_export_written_before_outputs_were_marked(tiny_model_dir, tmp_path):
    """Deliberate: "ours" is decided by the marker compress writes into compression.json, which exports from
    before it lack, so --force no longer replaces them; the one line says to delete the folder by hand."""
    import shutil

    old = tmp_path / "export-v1"
    shutil.copytree(DATA / "export-v1", old)
    before = sorted((p.name, p.read_bytes()) for p in old.iterdir())
    result = CliRunner().invoke(app, ["prune", str(tiny_model_dir), "--method", "magnitude", "--device", "cpu",
                                      "--out", str(old), "--force", "--quiet"])
    assert result.exit_code == 2 and "delete it by hand" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert sorted((p.name, p.read_bytes()) for p in old.iterdir()) == before
