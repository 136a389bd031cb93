"""Recipes: every file in recipes/ runs on a tiny model and its report's metrics hold against the outputs
(prune: the zeros and N:M groups of the saved weights; eval: finite perplexities, one recomputed from the
saved checkpoint; factorize: expert loads); malformed recipes exit 2 with file, line and key;
`prune --dry-run | run -` reproduces the direct command bit for bit; llm-compressor recipes translate.
Graph recipes (kind: graph) run in test_graph_recipe.py."""
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from compress.cli import app

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))
GRAPH_RECIPES = [r for r in RECIPES if (yaml.safe_load(r.read_text()) or {}).get("kind") == "graph"]
LM_RECIPES = [r for r in RECIPES if r not in GRAPH_RECIPES]
runner = CliRunner()


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


def small(recipe: Path, text_file) -> list[str]:
    """--set overrides that shrink a shipped recipe to the tiny model and text."""
    data = yaml.safe_load(recipe.read_text())
    sets = [f"calibrate.text={text_file}", "calibrate.nsamples=4", "calibrate.seqlen=32"]
    for item in data.get("stages", []):
        if "eval" in item:
            sets += [f"eval.text={text_file}", "eval.context=64", "eval.tokens=256"]
    return [arg for s in sets for arg in ("--set", s)]


@pytest.mark.parametrize("recipe", LM_RECIPES, ids=[r.stem for r in LM_RECIPES])
def test_shipped_recipe_runs_on_a_tiny_model(recipe, tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "out"
    dry = invoke("run", recipe, tiny_model_dir, "--out", out, "--dry-run", *small(recipe, text_file))
    assert dry.exit_code == 0, dry.output
    assert not out.exists()
    result = invoke("run", recipe, tiny_model_dir, "--out", out, "--json", "--quiet", "--set", "device=cpu",
                    *small(recipe, text_file))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    kinds = [stage["kind"] for stage in report["stages"]]
    assert kinds[-1] == "export" and {"prune", "factorize"} & set(kinds)
    for stage in report["stages"]:
        if stage["kind"] == "prune":
            check_prune_against_saved_weights(stage["result"], out)
        elif stage["kind"] == "eval":
            check_eval(stage["result"])
        elif stage["kind"] == "factorize":
            check_factorize(stage["result"], tiny_model_dir)
    manifest = json.loads((out / "compression.json").read_text())
    assert manifest["stages"][0]["kind"] == report["stages"][0]["kind"] != "eval"
    saved = yaml.safe_load((out / "recipe.yaml").read_text())  # the recipe as run, overrides applied
    assert saved["calibrate"]["nsamples"] == 4 and saved["out"] == str(out)


def test_every_shipped_recipe_is_run_by_a_test():
    assert RECIPES and set(LM_RECIPES) | set(GRAPH_RECIPES) == set(RECIPES)
    assert "wanda-2of4" in [r.stem for r in LM_RECIPES]  # the one whose perplexity is recomputed below


def saved_weights(out: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the saved checkpoint by name; a compressed export's N:M Linears as their stored
    dense weight (zeros in place, groups of M in stored order)."""
    from safetensors.torch import load_file

    from compress.kernels.sparse_linear import SparseLinear
    from compress.pipeline.loading import load_export

    if not (out / "compressed.safetensors").is_file():
        return {k: v for f in sorted(out.glob("*.safetensors")) for k, v in load_file(str(f)).items()}
    model = load_export(out, torch.float32)
    sparse = {name: m for name, m in model.named_modules() if isinstance(m, SparseLinear)}
    tensors = {k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] not in sparse}
    return {**tensors, **{f"{name}.weight": m.stored_weight() for name, m in sparse.items()}}


def check_prune_against_saved_weights(result: dict, out: Path) -> None:
    """The prune stage's zeros are the zeros of the saved weights: per Linear where the names match, in total
    always (a MoE export renames the experts), and every pruned weight has the pattern's structure."""
    tensors = {k: v.float() for k, v in saved_weights(out).items() if v.is_floating_point()}
    linears = result["linears"]
    zeros = sum(info["zeros"] for info in linears.values())
    assert zeros == sum(int((v == 0).sum()) for v in tensors.values())
    assert result["overall_sparsity"] == pytest.approx(zeros / sum(info["numel"] for info in linears.values()),
                                                      abs=1e-4)
    for name, info in linears.items():
        if f"{name}.weight" in tensors:
            assert int((tensors[f"{name}.weight"] == 0).sum()) == info["zeros"], name
    pattern = result["pattern"]
    pruned = [v for v in tensors.values() if v.dim() == 2 and (v == 0).any()]
    assert pruned
    for weight in pruned:
        if pattern["type"] == "n:m":
            groups = (weight == 0).reshape(weight.shape[0], -1, pattern["m"]).sum(-1)
            assert (groups >= pattern["m"] - pattern["n"]).all()
        else:  # unstructured: the same fraction of every output row
            per_row = (weight == 0).sum(1).float() / weight.shape[1]
            assert per_row.sub(pattern["sparsity"]).abs().max() <= 1 / weight.shape[1]


def check_eval(result: dict) -> None:
    for when in ("before", "after"):
        measured = result[when]
        assert math.isfinite(measured["perplexity"]) and measured["perplexity"] > 1
        assert measured["perplexity"] == pytest.approx(math.exp(measured["nll"]), rel=1e-9)
        assert measured["tokens"] == measured["windows"] * (measured["context"] - (not measured["bos"]))


def check_factorize(result: dict, model_dir: Path) -> None:
    from transformers import AutoConfig

    assert len(result["layers"]) == AutoConfig.from_pretrained(model_dir).num_hidden_layers
    assert result["ffn_flops_share"] == pytest.approx(result["top_k"] / result["experts"])
    for layer in result["layers"]:
        load = layer["info"]["load"]  # the share of routed tokens each expert received
        assert len(load) == result["total_experts"] and min(load) >= 0
        assert sum(load) == pytest.approx(1.0, abs=1e-5)


def test_eval_perplexity_recomputed_from_the_saved_checkpoint(tiny_model_dir, text_file, tmp_path):
    """wanda-2of4's eval stage: exp(mean NLL) over 64-token windows of the first 256 held-out tokens,
    recomputed here with transformers alone, before (the input model) and after (the saved one)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = next(r for r in LM_RECIPES if r.stem == "wanda-2of4")
    out = tmp_path / "out"
    result = invoke("run", recipe, tiny_model_dir, "--out", out, "--json", "--quiet", "--set", "device=cpu",
                    *small(recipe, text_file))
    assert result.exit_code == 0, result.output
    measured = next(s for s in json.loads(result.stdout)["stages"] if s["kind"] == "eval")["result"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor(tokenizer(text_file.read_text(), add_special_tokens=False)["input_ids"][:256])
    windows = ids[: ids.numel() // 64 * 64].view(-1, 64)
    if measured["after"]["bos"]:
        windows = torch.cat([torch.full((len(windows), 1), tokenizer.bos_token_id), windows], 1)
    for when, path in (("before", tiny_model_dir), ("after", out)):
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(windows).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
        assert measured[when]["perplexity"] == pytest.approx(math.exp(nll.item()), rel=1e-5), when


def run_hash(out: Path) -> str:
    return hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()


def test_dry_run_piped_to_run_reproduces_the_direct_command(tiny_model_dir, text_file, tmp_path):
    args = ["prune", tiny_model_dir, "--method", "sparsegpt", "--pattern", "4:8", "--permute", "heuristic",
            "--text", text_file, "--nsamples", 6, "--seqlen", 48, "--device", "cpu", "--quiet"]
    direct = invoke(*args, "--out", tmp_path / "direct")
    assert direct.exit_code == 0, direct.output
    dry = invoke(*args, "--out", tmp_path / "piped", "--dry-run")
    assert dry.exit_code == 0 and not (tmp_path / "piped").exists(), dry.output
    piped = invoke("run", "-", "--quiet", input=dry.stdout)
    assert piped.exit_code == 0, piped.output
    assert run_hash(tmp_path / "direct") == run_hash(tmp_path / "piped")
    assert (tmp_path / "direct" / "permutations.safetensors").read_bytes() == \
        (tmp_path / "piped" / "permutations.safetensors").read_bytes()


def test_set_addresses_stages_by_name_and_index(tiny_model_dir, text_file, tmp_path):
    recipe = tmp_path / "two.yaml"
    recipe.write_text("calibrate: {nsamples: 4, seqlen: 32}\nstages:\n"
                      "  - prune: {name: attention, targets: self_attn, pattern: '2:4'}\n"
                      "  - prune: {name: mlp, targets: mlp, method: magnitude, pattern: '2:4'}\n")
    result = invoke("run", recipe, tiny_model_dir, "--dry-run", "--set", "mlp.pattern=6:8",
                    "--set", "stages.0.method=ria", "--set", f"calibrate.text={text_file}")
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.stdout)
    assert resolved["stages"][0]["prune"]["method"] == "ria" and resolved["stages"][1]["prune"]["pattern"] == "6:8"


LLMC_QUANT = """quant_stage:
  run_type: oneshot
  quant_modifiers:
    GPTQModifier:
      ignore: [lm_head]
"""

# name: (recipe text, line the message must name, text it must contain)
MALFORMED = {
    "yaml syntax": ("calibrate: {}\nstages: [\n  - prune: {}\n", 3, "YAML syntax error"),
    "unknown stage": ("calibrate: {}\nstages:\n  - quantize: {bits: 4}\n", 3, "unknown stage 'quantize'"),
    "misspelled key": ("calibrate: {}\nstages:\n  - prune:\n      patern: '2:4'\n", 4, "stages[0].prune.patern"),
    "wrong type": ("calibrate:\n  nsamples: many\nstages:\n  - prune: {}\n", 2, "calibrate.nsamples"),
    "N >= M": ("calibrate: {}\nstages:\n  - prune:\n      pattern: 4:2\n", 4, "stages[0].prune.pattern"),
    "0:4": ("calibrate: {}\nstages:\n  - prune:\n      pattern: '0:4'\n", 4, "need 0 < N < M"),
    "unknown method": ("calibrate: {}\nstages:\n  - prune:\n      method: obs\n", 4, "unknown method 'obs'"),
    "permute unstructured": ("calibrate: {}\nstages:\n  - prune:\n      sparsity: 0.5\n      permute: heuristic\n",
                             5, "stages[0].prune.permute"),
    "compressed unstructured": ("calibrate: {}\nstages:\n  - prune: {sparsity: 0.5}\n  - export:\n"
                                "      format: compressed\nout: x\n", 5, "stages[1].export.format"),
    "missing model": ("model: ./no/such/model\ncalibrate: {}\nstages:\n  - prune: {}\n", 1, "model"),
    "python tag": ("calibrate: !!python/object/apply:os.system ['true']\nstages:\n  - prune: {}\n", 1, "tag"),
    "negative nsamples": ("calibrate:\n  nsamples: -8\nstages:\n  - prune: {}\n", 2, "calibrate.nsamples"),
    "no calibration": ("stages:\n  - prune: {method: wanda}\n", 2, "needs calibration data"),
    "export not last": ("calibrate: {}\nstages:\n  - export: {}\n  - prune: {}\nout: x\n", 3, "export must be the last"),
    "duplicate key": ("calibrate: {}\nstages:\n  - prune:\n      method: wanda\n      method: ria\n", 5, "twice"),
    "sparsity out of range": ("calibrate: {}\nstages:\n  - prune:\n      sparsity: 1.5\n", 4, "stages[0].prune.sparsity"),
    "nan damp": ("calibrate: {}\nstages:\n  - prune:\n      damp: .nan\n", 4, "stages[0].prune.damp"),
    "no stages": ("calibrate: {}\nstages: []\n", 2, "stages"),
    "unknown top key": ("modle: x\ncalibrate: {}\nstages:\n  - prune: {}\n", 1, "modle"),
    "export without out": ("calibrate: {}\nstages:\n  - prune: {}\n  - export: {}\n", 1, "out"),
    "unsupported modifier": (LLMC_QUANT, 4, "GPTQModifier"),
    "stage not a mapping": ("calibrate: {}\nstages:\n  - prune\n", 3, "stages[0]"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_recipe_exits_2_naming_file_line_and_key(case, tmp_path, monkeypatch):
    text, line, needle = MALFORMED[case]
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = invoke("run", recipe, "--out", tmp_path / "out") if "out:" not in text and case != "export without out" \
        else invoke("run", recipe)
    lines = [l for l in result.output.strip().splitlines() if l.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert f"bad.yaml:{line}:" in lines[0] and needle in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_llmcompressor_translation_keeps_their_settings(tmp_path):
    recipe = Path(__file__).parent.parent / "recipes" / "llmcompressor-sparsegpt-2of4.yaml"
    result = invoke("run", recipe, "--dry-run")
    assert result.exit_code == 0, result.output
    prune = yaml.safe_load(result.stdout)["stages"][0]["prune"]
    assert prune["method"] == "sparsegpt" and prune["pattern"] == "2:4" and prune["damp"] == 0.01
    assert prune["blocksize"] == 128 and "lm_head" in prune["ignore"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text().replace("block_size: 128", "owl_m: 5"))
    result = invoke("run", bad, "--dry-run")
    assert result.exit_code == 2 and "owl_m" in result.output and "bad.yaml:" in result.output
