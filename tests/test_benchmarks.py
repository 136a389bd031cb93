"""BENCHMARKS.md is rendered from benchmarks/results/, and each stored result has the keys its script writes now."""
from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import _meta, render
from benchmarks._schema import differences

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"

# script -> (output flag, stored results it writes, needs CUDA)
SCRIPTS = {
    "cpu_methods.py": ("--out", ["cpu-methods"], False),
    "permutations.py": ("--out", ["permutations-global-wanda24", "permutations-global-sparsegpt24",
                                  "permutations-global-wanda68"], False),
    "prune_7b.py": ("--json", ["prune7b-h200", "prune7b-h200-47263c1", "perm7b-swap-h200", "perm7b-global-h100",
                                 "perm7b-global-32layers-h100"],
                    False),
    "ties.py": ("--out", ["ties"], False),
    "tie_rules.py": ("--out", ["tie-rules"], False),
    "first_token.py": ("--out", ["first-token"], False),
    "graph_b3db.py": ("--out", ["graph-b3db"], False),
    "graph_gpu_time.py": ("--json", ["graph-gpu-h200"], True),
    "factorize.py": ("--out", ["factorize"], False),
    "factorize_oracle.py": ("--out", ["factorize-oracle"], False),
    "factorize_finetune.py": ("--out", ["factorize-finetune", "factorize-finetune-active"], False),
    "factorize_gpu.py": ("--json", ["factorize-gpu-h200"], False),  # its tiny mode runs on the CPU
    "factorize_active_gpu.py": ("--json", ["factorize-active-gpu-h100"], True),
    "factorize_launch.py": ("--json", ["factorize-launch-h100"], True),
    "e2e_7b.py": ("--json", ["e2e7b-h200", "e2e7b-compile-h200"], True),
    "sparse_gemm.py": ("--json", ["kernels-h200", "kernels-ours-h200"], True),
    "cslt_transposed.py": ("--json", ["cslt-transposed-h200"], True),
    "eval_kernels.py": ("--json", ["eval-kernels-1b-h200"], True),
    "attention_quality.py": ("--out", ["attention-quality"], False),
    "attention_passkey.py": ("--out", ["attention-passkey"], False),
    "attention_kernels.py": ("--json", ["attention-kernels-h200", "attention-kernels-default-h100"], True),
    "attention_decode.py": ("--json", ["attention-decode-h200"], False),  # its tiny mode runs on the CPU
    "attention_crossover.py": ("--json", ["attention-crossover-h100"], False),  # its tiny mode runs on the CPU
    "zero_shot.py": ("--out", ["zero-shot"], False),
    "resume_overhead.py": ("--out", ["resume-overhead", "resume-overhead-gpu"], False),  # --gpu-shape: the GPU file
    "cmoe_reference.py": ("--out", ["factorize-cmoe-reference"], False),
}
NOT_YET_MEASURED: set[str] = set()  # results still to be stored: their keys are checked once they are
NEEDS = {"graph_b3db.py": ("torch_geometric", "grakel", "ogb", "rdkit"), "graph_gpu_time.py": ("torch_geometric",),
         "attention_decode.py": ("triton",),  # its tiny mode checks the append kernel in Triton's interpreter
         "zero_shot.py": ("lm_eval",)}  # the zeroshot extra
CHECKOUTS = {"cmoe_reference.py": "CMOE_SRC"}  # scripts that run others' code from a checkout named by this variable


def test_benchmarks_md_is_rendered_from_the_results():
    text = render.DOC.read_text()
    assert render.render(text) == text, "BENCHMARKS.md is out of date: run python -m benchmarks.render"
    assert render.unmarked_figures(text) == []


def test_every_figure_is_used_and_every_result_is_shown():
    text = render.DOC.read_text()
    used = {m.group(2) for m in render.MARK.finditer(text)}
    assert {name for name in render.FIGURES if not name.startswith("cmd/")} - used == set()
    assert {f"meta/{p.stem}" for p in RESULTS.glob("*.json")} <= used


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_stored_result_has_meta(path):
    meta = json.loads(path.read_text())["meta"]
    if meta.get("reconstructed"):
        assert meta["reconstruction_note"] and meta["last_committed"]["commit"]
    else:
        script = _meta.script_name(meta["command"])
        assert set(_meta.KEYS) <= set(meta) and meta["commit"] and script and (BENCH / f"{script}.py").is_file()


def test_every_stored_result_is_claimed_by_a_script():
    claimed = {stem for _, stems, _ in SCRIPTS.values() for stem in stems}
    assert {p.stem for p in RESULTS.glob("*.json")} <= claimed


def check_keys(written: dict, stems: list[str]) -> None:
    assert set(_meta.KEYS) <= set(written["meta"])
    for stem in stems:
        if stem in NOT_YET_MEASURED and not (RESULTS / f"{stem}.json").exists():
            continue
        stored = json.loads((RESULTS / f"{stem}.json").read_text())
        assert differences(written, stored) == stored["meta"].get("differs_from_script", []), stem


@pytest.fixture(scope="module", autouse=True)
def cpu_methods_run(tmp_path_factory):
    """cpu_methods.py runs `compress` in child processes: start it first, in the background, to overlap the rest."""
    out = tmp_path_factory.mktemp("cpu-methods") / "out.json"
    child = subprocess.Popen([sys.executable, "-m", "benchmarks.cpu_methods", "--tiny", "--out", str(out)], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    yield child, out
    if child.poll() is None:
        child.kill()
        child.wait()


@pytest.mark.parametrize("script", sorted(s for s in SCRIPTS if s != "cpu_methods.py"))
def test_tiny_run_writes_the_stored_keys(script, tmp_path, monkeypatch):
    flag, stems, cuda = SCRIPTS[script]
    if cuda and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    for module in NEEDS.get(script, ()):  # optional extras (the GPU machine has PyG but no RDKit/OGB)
        pytest.importorskip(module)
    if script in CHECKOUTS and not os.environ.get(CHECKOUTS[script]):
        pytest.skip(f"needs {CHECKOUTS[script]}")
    out = tmp_path / "out.json"
    monkeypatch.setattr(sys, "argv", [str(BENCH / script), "--tiny", flag, str(out)])
    with torch.enable_grad():  # scripts may switch grad off for the whole process
        runpy.run_module(f"benchmarks.{Path(script).stem}", run_name="__main__", alter_sys=True)
    check_keys(json.loads(out.read_text()), stems)


def test_tiny_cpu_methods_writes_the_stored_keys(cpu_methods_run):
    child, out = cpu_methods_run
    _, stderr = child.communicate(timeout=300)
    assert child.returncode == 0, stderr[-2000:]
    check_keys(json.loads(out.read_text()), SCRIPTS["cpu_methods.py"][1])
