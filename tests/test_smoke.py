"""The smoke subset: one real job per command family, through the installed `compress` entry point.

CI runs these also in a second virtual environment holding the newest versions pyproject allows (not the
lock), so an upstream release that breaks us fails there by name before anyone bumps constraints.txt.
Each job is tiny (a random two-layer Llama, a few calibration windows) and checks what it wrote.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.smoke

ENTRY = shutil.which("compress", path=str(Path(sys.executable).parent)) or shutil.which("compress")


def compress(*args, json_out: bool = True) -> dict | str:
    """Run the installed command; exit 0 expected; its --json report (or stdout)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([ENTRY, *map(str, args), *(["--json"] if json_out else [])], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, f"compress {' '.join(map(str, args))}: {done.stderr[-2000:]}"
    return json.loads(done.stdout) if json_out else done.stdout


def weights(directory: Path) -> dict[str, torch.Tensor]:
    out = {}
    for path in sorted(directory.glob("*.safetensors")):
        out.update(load_file(path))
    return out


def test_the_entry_point_imports_and_answers():
    assert ENTRY, "the compress command is not installed"
    assert "prune" in compress("--help", json_out=False)


def test_prune_writes_a_2of4_checkpoint(tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "pruned"
    report = compress("prune", tiny_model_dir, "--method", "wanda", "--pattern", "2:4", "--text", text_file,
                      "--nsamples", 4, "--seqlen", 32, "--device", "cpu", "--out", out, "--quiet")
    assert report["stages"][0]["result"]["overall_sparsity"] == pytest.approx(0.5)
    pruned = weights(out)
    down = pruned["model.layers.0.mlp.down_proj.weight"]
    assert ((down.reshape(down.shape[0], -1, 4) != 0).sum(-1) <= 2).all()
    dense = weights(tiny_model_dir)
    assert torch.equal(pruned["model.embed_tokens.weight"], dense["model.embed_tokens.weight"])


def test_a_recipe_runs_prune_then_eval(tiny_model_dir, text_file, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"calibrate: {{nsamples: 4, seqlen: 32, text: '{text_file}'}}\n"
                      "stages:\n  - prune: {method: sparsegpt, pattern: '2:4'}\n"
                      f"  - eval: {{context: 32, tokens: 256, text: '{text_file}'}}\n")
    report = compress("run", recipe, tiny_model_dir, "--set", "device=cpu", "--out", tmp_path / "out", "--quiet")
    evaluated = report["stages"][1]["result"]
    before, after = evaluated["before"]["perplexity"], evaluated["after"]["perplexity"]
    assert before > 1 and after > 1 and before != after  # measured on the dense model, then on the pruned one
    assert (tmp_path / "out" / "compression.json").is_file()


def test_factorize_exports_a_mixtral_that_reloads(tiny_model_dir, text_file, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "moe"
    report = compress("factorize", tiny_model_dir, "--experts", 2, "--top-k", 1, "--steps", 3, "--text", text_file,
                      "--nsamples", 4, "--seqlen", 32, "--device", "cpu", "--out", out, "--quiet")
    assert report["stages"][0]["result"]["experts"] == 2
    assert type(AutoModelForCausalLM.from_pretrained(out)).__name__ == "MixtralForCausalLM"


def test_double_sparsity_calibrates_then_evaluates(tiny_model_dir, text_file, tmp_path):
    channels = tmp_path / "channels.json"
    compress("attention", "calibrate", tiny_model_dir, "--out", channels, "--text", text_file, "--nsamples", 2,
             "--seqlen", 32, "--device", "cpu", "--quiet", json_out=False)
    assert "model.layers.1.self_attn.qk_proj" in json.loads(channels.read_text())
    report = compress("eval", tiny_model_dir, "--double-sparsity", channels, "--channels", "1/4", "--tokens", 4,
                      "--dense-layers", 1, "--text", text_file, "--context", 32, "--max-tokens", 256,
                      "--device", "cpu", "--quiet")
    dense, sparse = report["results"]
    assert dense["model"].endswith("(dense)") and "double sparsity" in sparse["model"]
    assert sparse["perplexity"] != dense["perplexity"] and sparse["perplexity"] > 1


def test_graph_train_then_prune(tmp_path):
    pytest.importorskip("torch_geometric")
    pytest.importorskip("grakel")
    trained = tmp_path / "gps"
    compress("graph", "train", "--data", "mutag", "--epochs", 1, "--channels", 16, "--layers", 2, "--heads", 2,
             "--device", "cpu", "--out", trained, "-q", json_out=False)
    report = compress("graph", "prune", trained, "--heads", "0.5", "--weights", "0.5", "--device", "cpu",
                      "--out", tmp_path / "pruned", "-q")
    assert report["pruned"]["structural_flops"] < report["reference"]["structural_flops"]
