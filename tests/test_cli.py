"""End-to-end CLI runs on a tiny random Llama, and every bad input's exit code and leftovers."""
import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from compress.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def common(text_file, method="wanda"):
    if method == "magnitude":
        return ["--device", "cpu"]
    return ["--text", text_file, "--nsamples", 8, "--seqlen", 64, "--device", "cpu"]


EVAL = ["--eval-context", 128]


def test_version_and_help():
    assert invoke("--version").stdout.startswith("compress ")
    result = invoke("prune", "--help")
    assert result.exit_code == 0 and "Examples" in result.stdout


def test_prune_eval_export_roundtrip(tiny_model_dir, text_file, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "pruned"
    result = invoke("prune", tiny_model_dir, "--method", "sparsegpt", "--pattern", "4:8", "--eval", "--json",
                    "--out", out, *common(text_file), "--eval-text", text_file, *EVAL)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    prune, evaluation = report["stages"][0]["result"], report["stages"][1]["result"]
    assert prune["overall_sparsity"] == pytest.approx(0.5)
    assert evaluation["before"]["perplexity"] > 1 and evaluation["after"]["perplexity"] > 1
    manifest = json.loads((out / "compression.json").read_text())
    pruned = manifest["stages"][0]["result"]
    assert pruned["method"] == "sparsegpt" and pruned["pattern"] == {"type": "n:m", "n": 4, "m": 8, "zero_fraction": 0.5}
    assert manifest["calibration"]["nsamples"] == 8 and manifest["calibration"]["seed"] == 0
    assert len(pruned["layers"]) == 2
    assert (out / "recipe.yaml").is_file()

    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, 320, (2, 40))
    with torch.no_grad():
        logits = reloaded(ids).logits
    # the same job in memory gives the same logits as the exported checkpoint
    from compress.calibrate.data import TextSource
    from compress.model.loading import load_model
    from compress.prune.apply import PruneConfig, prune_model
    from compress.calibrate.data import calibration_tokens

    model, tok, _ = load_model(str(tiny_model_dir), "float32", "cpu")
    calib = calibration_tokens(tok, TextSource(path=str(text_file)), 8, 64, 0)
    prune_model(model, PruneConfig(method="sparsegpt", pattern="4:8"), calib)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, logits)
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert (original.model.layers[0].mlp.up_proj.weight != 0).all()  # the input was not modified


def test_permuted_export_stores_indices_that_make_weights_n_m(tiny_model_dir, text_file, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from compress.permute.fold import is_permutation

    out = tmp_path / "permuted"
    result = invoke("prune", tiny_model_dir, "--method", "wanda", "--pattern", "2:4", "--permute", "heuristic",
                    "--out", out, "--json", *common(text_file))
    assert result.exit_code == 0, result.output
    pruned = json.loads((out / "compression.json").read_text())["stages"][0]["result"]
    assert pruned["permute"]["kind"] == "heuristic"
    assert pruned["permutation_sites"]["model.layers.1.mlp.down_proj"] == "mlp"
    perms = load_file(out / "permutations.safetensors")
    model = AutoModelForCausalLM.from_pretrained(out)
    assert len(perms) == 14
    for name, perm in perms.items():
        weight = model.get_submodule(name).weight
        assert is_permutation(perm, weight.shape[1])
        assert ((weight[:, perm] != 0).view(weight.shape[0], -1, 4).sum(-1) == 2).all()


def test_eval_side_by_side(tiny_model_dir, text_file, tmp_path):
    from tests.conftest import save_tiny_model

    other = save_tiny_model(tmp_path / "other", seed=7)
    args = ["--text", text_file, "--context", 64, "--json", "--device", "cpu"]
    both = invoke("eval", tiny_model_dir, other, *args)
    assert both.exit_code == 0, both.output
    rows = json.loads(both.stdout)["results"]
    alone = [json.loads(invoke("eval", m, *args).stdout)["results"][0] for m in (tiny_model_dir, other)]
    assert [r["perplexity"] for r in rows] == [r["perplexity"] for r in alone]  # each row is its own model's
    assert rows[0]["perplexity"] != rows[1]["perplexity"]


def test_force_replaces_only_an_earlier_output(tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    (out / "sub").mkdir()
    for extra in ([], ["--force"]):  # a folder this tool did not write is never replaced
        result = invoke("prune", tiny_model_dir, "--method", "magnitude", "--out", out, *extra, *common(text_file, "magnitude"))
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert (out / "keep.txt").read_text() == "mine" and (out / "sub").is_dir()
    fresh = tmp_path / "fresh"
    assert invoke("prune", tiny_model_dir, "--method", "magnitude", "--out", fresh, *common(text_file, "magnitude")).exit_code == 0
    result = invoke("prune", tiny_model_dir, "--method", "magnitude", "--pattern", "4:8", "--out", fresh, "--force",
                    *common(text_file, "magnitude"))
    assert result.exit_code == 0, result.output
    manifest = json.loads((fresh / "compression.json").read_text())
    assert manifest["stages"][0]["result"]["pattern"]["m"] == 8


def test_out_dot_is_refused(tiny_model_dir, text_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.txt").write_text("mine")
    result = invoke("prune", tiny_model_dir, "--method", "magnitude", "--out", ".", "--force", *common(text_file, "magnitude"))
    assert result.exit_code == 2 and (tmp_path / "mine.txt").read_text() == "mine"


def corrupt_copy(src, dst):
    shutil.copytree(src, dst)
    (dst / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    return dst


def mkdir(path):
    path.mkdir()
    return path


def no_layers_model(tmp_path):
    from tests.conftest import save_tiny_model

    return save_tiny_model(tmp_path / "nolayers", num_hidden_layers=0)


BAD_INPUTS = {
    "missing path": (lambda d, t: ["prune", t / "nope"], "no such file"),
    "not a model dir": (lambda d, t: ["prune", mkdir(t / "empty")], "no config.json"),
    "corrupt safetensors": (lambda d, t: ["prune", corrupt_copy(d, t / "corrupt")], "could not load"),
    "unknown method": (lambda d, t: ["prune", d, "--method", "obs"], "unknown method"),
    "bad pattern": (lambda d, t: ["prune", d, "--pattern", "4:2"], "need 0 < N < M"),
    "M does not divide": (lambda d, t: ["prune", d, "--pattern", "2:3"], "does not divide"),
    "pattern and sparsity": (lambda d, t: ["prune", d, "--pattern", "2:4", "--sparsity", "0.5"], "exactly one"),
    "bad sparsity": (lambda d, t: ["prune", d, "--sparsity", "1.5"], "between 0 and 1"),
    "no decoder layers": (lambda d, t: ["prune", no_layers_model(t)], "no decoder layers"),
    "bad regex": (lambda d, t: ["prune", d, "--targets", "("], "bad regular expression"),
    "nothing targeted": (lambda d, t: ["prune", d, "--targets", "nomatch"], "no Linear layers matched"),
    "missing text": (lambda d, t: ["prune", d, "--text", t / "none.txt"], "no such text file"),
    "offline hub id": (lambda d, t: ["prune", "someone/some-model"], "hub"),
    "unknown permutation": (lambda d, t: ["prune", d, "--permute", "random"], "--permute"),
    "learned without data": (lambda d, t: ["prune", d, "--method", "magnitude", "--permute", "learned"], "calibration data"),
    "damp with wanda": (lambda d, t: ["prune", d, "--method", "wanda", "--damp", "0.1"], "--damp does not apply"),
    "ria alpha with wanda": (lambda d, t: ["prune", d, "--ria-alpha", "0.3"], "--ria-alpha does not apply"),
    "perm steps without permute": (lambda d, t: ["prune", d, "--perm-steps", "3"], "--perm-steps does not apply"),
    "eval text without eval": (lambda d, t: ["prune", d, "--eval-text", t / "x.txt"], "--eval-text does not apply"),
    "export without out": (lambda d, t: ["prune", d, "--export", "compressed", "--dry-run"], "--export does not apply"),
    "nsamples with magnitude": (lambda d, t: ["prune", d, "--method", "magnitude", "--nsamples", "4"], "does not apply"),
    "eval missing model": (lambda d, t: ["eval", t / "nope"], "no such file"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_and_writes_nothing(case, tiny_model_dir, text_file, tmp_path):
    build, message = BAD_INPUTS[case]
    args = build(tiny_model_dir, tmp_path)
    out = tmp_path / "out"
    method = args[args.index("--method") + 1] if "--method" in args else "wanda"
    extra = ["--out", out, *common(text_file, method)] if args[0] == "prune" and "--dry-run" not in args else []
    if "--text" in args:
        extra = ["--out", out, "--nsamples", 8, "--seqlen", 64]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = invoke(*args, *extra)
    assert result.exit_code == 2, result.output
    lines = [l for l in result.output.strip().splitlines() if l.strip()]
    assert lines[-1].startswith("error:") and message in result.output and "Traceback" not in result.output
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
