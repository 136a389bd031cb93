"""Plain bad input (issue 21): numbers too large for torch, non-finite floats, bad regexes in recipes, --set
values YAML cannot read, a pickle checkpoint, a distillation top-k above the vocabulary. Each is one line
naming the flag or key, exit 2, nothing written, and where the value alone is wrong, before a model loads."""
import pytest
from typer.testing import CliRunner

from compress.cli import app

runner = CliRunner()
HUGE = str(10 ** 30)


def refused(args, tmp_path, monkeypatch, *words):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "internal error" not in result.output and "\x1b" not in result.output, result.output
    for word in words:
        assert word in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written
    return lines[0]


@pytest.mark.parametrize("flag, value", [
    ("--seed", HUGE), ("--seed", "-1"), ("--nsamples", HUGE), ("--seqlen", HUGE), ("--blocksize", HUGE),
    ("--calib-batch", HUGE), ("--damp", "inf"), ("--ria-alpha", "nan"), ("--targets", "[qk"), ("--ignore", "(")])
def test_prune_numbers_and_regexes_are_checked_at_validation(flag, value, tiny_model_dir, tmp_path, monkeypatch):
    method = {"--blocksize": "sparsegpt", "--damp": "sparsegpt", "--ria-alpha": "ria"}.get(flag, "wanda")
    refused(["prune", tiny_model_dir, "--method", method, flag, value, "--dry-run"], tmp_path, monkeypatch, flag)


def test_prune_eval_tokens_too_large(tiny_model_dir, tmp_path, monkeypatch):
    refused(["prune", tiny_model_dir, "--eval", "--eval-tokens", HUGE, "--dry-run"], tmp_path, monkeypatch,
            "--eval-tokens")


@pytest.mark.parametrize("flag", ["--context", "--max-tokens"])
def test_eval_counts_too_large(flag, tiny_model_dir, tmp_path, monkeypatch):
    refused(["eval", tiny_model_dir, flag, HUGE, "--device", "cpu"], tmp_path, monkeypatch, flag)


@pytest.mark.parametrize("flag", ["--dense-layers", "--sink", "--recent"])
def test_eval_double_sparsity_counts_too_large(flag, tiny_model_dir, tmp_path, monkeypatch):
    refused(["eval", tiny_model_dir, "--double-sparsity", "nowhere.json", flag, HUGE], tmp_path, monkeypatch, flag)


@pytest.mark.parametrize("flag, value", [("--seed", HUGE), ("--steps", HUGE), ("--batch-tokens", HUGE),
                                         ("--expert-steps", HUGE), ("--distill-top", HUGE), ("--nsamples", HUGE),
                                         ("--par-weight", "inf"), ("--experts", HUGE)])
def test_factorize_numbers_are_checked_at_validation(flag, value, tiny_model_dir, tmp_path, monkeypatch):
    refused(["factorize", tiny_model_dir, flag, value, "--dry-run"], tmp_path, monkeypatch, flag)


def test_factorize_distill_top_above_the_vocabulary(tiny_model_dir, text_file, tmp_path, monkeypatch):
    refused(["factorize", tiny_model_dir, "--experts", 2, "--train", "router+experts", "--distill-top", 1000,
             "--text", text_file, "--nsamples", 2, "--seqlen", 32, "--device", "cpu", "--out", "o", "-q"],
            tmp_path, monkeypatch, "--distill-top", "320")


@pytest.mark.parametrize("flag", ["--seed", "--nsamples", "--seqlen"])
def test_attention_calibrate_numbers(flag, tiny_model_dir, tmp_path, monkeypatch):
    refused(["attention", "calibrate", tiny_model_dir, "--out", "c.json", flag, HUGE], tmp_path, monkeypatch, flag)


@pytest.mark.parametrize("flag", ["--new-tokens", "--dense-layers"])
def test_attention_generate_numbers(flag, tiny_model_dir, tmp_path, monkeypatch):
    refused(["attention", "generate", tiny_model_dir, "--double-sparsity", "nowhere.json", "--prompt", "x", flag, HUGE],
            tmp_path, monkeypatch, flag)


RECIPE = "calibrate: {}\nstages:\n  - prune: {method: wanda}\n"


@pytest.mark.parametrize("key", ["calibrate.seed", "calibrate.nsamples", "prune.perm_blocks", "prune.calib_batch"])
def test_run_set_numbers_too_large(key, tiny_model_dir, tmp_path, monkeypatch):
    recipe = tmp_path.parent / f"{tmp_path.name}-r.yaml"
    recipe.write_text(RECIPE)
    refused(["run", recipe, tiny_model_dir, "--set", f"{key}={HUGE}", "--dry-run"], tmp_path, monkeypatch, key)


LLMC = """sparsity_stage:
  run_type: oneshot
  sparsity_modifiers:
    SparseGPTModifier:
      sparsity: 0.5
      mask_structure: "{structure}"
      targets: ["{target}"]
      ignore: ["{ignore}"]
"""


@pytest.mark.parametrize("structure, target, ignore, words", [
    ("2:4", "re:[model", "lm_head", [".yaml:7:", "targets", "[model"]),
    ("2:4", "Linear", "re:(lm_head", [".yaml:8:", "ignore", "(lm_head"]),
    ("2:0", "Linear", "lm_head", [".yaml:6:", "mask_structure", "2:0"]),
    ("4:2", "Linear", "lm_head", [".yaml:6:", "mask_structure", "4:2"]),
])
def test_llmcompressor_recipe_bad_regex_or_structure(structure, target, ignore, words, tmp_path, monkeypatch):
    recipe = tmp_path.parent / f"{tmp_path.name}-llmc.yaml"
    recipe.write_text(LLMC.format(structure=structure, target=target, ignore=ignore))
    refused(["run", recipe, "--dry-run"], tmp_path, monkeypatch, *words)


def test_set_value_that_yaml_cannot_read_names_key_and_value(tiny_model_dir, tmp_path, monkeypatch):
    recipe = tmp_path.parent / f"{tmp_path.name}-r.yaml"
    recipe.write_text(RECIPE)
    refused(["run", recipe, tiny_model_dir, "--set", "calibrate.nsamples=[1, 2", "--dry-run"], tmp_path, monkeypatch,
            "calibrate.nsamples", "[1, 2")


def test_set_regex_value_for_a_string_key_is_taken_as_the_string(tiny_model_dir, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    result = runner.invoke(app, ["run", str(recipe), str(tiny_model_dir), "--set", "prune.targets=[qk]_proj",
                                 "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "targets: '[qk]_proj'" in result.output


def test_pickle_checkpoint_is_refused_in_plain_text(tmp_path, monkeypatch):
    import fractions

    import torch

    from tests.conftest import make_tokenizer, tiny_llama_config

    model = tmp_path.parent / f"{tmp_path.name}-pickle"
    model.mkdir()
    tiny_llama_config().save_pretrained(model)
    make_tokenizer().save_pretrained(model)
    torch.save({"model.embed_tokens.weight": fractions.Fraction(1, 3)}, model / "pytorch_model.bin")  # not a tensor
    line = refused(["eval", model, "--device", "cpu", "-q"], tmp_path, monkeypatch, "pytorch_model.bin", "refused")
    assert "weights-only" in line and "fractions.Fraction" in line
