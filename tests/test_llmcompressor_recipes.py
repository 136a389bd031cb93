"""llm-compressor recipes in each shape it writes or reads: staged (their examples), a flat list of modifiers
(the list oneshot(recipe=[...]) takes), what Recipe.yaml() saves today (every field of the modifier, in a
default stage) and the recipe.yaml older versions saved, whose run_type is a python/object/apply tag of their
StageRunType enum. Each runs on a tiny model and prunes to the very masks the staged form gives; that tag is
read only as run_type and only with oneshot or train inside; every other tag is refused in one line.

The fixtures are written out as llm-compressor writes them: PyYAML's dump with default_flow_style=None (short
lists inline), the enum as `!!python/object/apply:llmcompressor.recipe.stage.StageRunType [oneshot]`.
"""
from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from compress.cli import app

runner = CliRunner()

STAGED = """sparsity_stage:
  run_type: oneshot
  sparsity_modifiers:
    SparseGPTModifier:
      sparsity: 0.5
      mask_structure: "2:4"
      targets: ["Linear"]
      ignore: ["re:.*lm_head"]
      dampening_frac: 0.01
      block_size: 128
"""

FLAT_LIST = """- SparseGPTModifier:
    sparsity: 0.5
    mask_structure: "2:4"
    targets: ["Linear"]
    ignore: ["re:.*lm_head"]
    dampening_frac: 0.01
"""

SAVED_TODAY = """default_stage:
  default_modifiers:
    SparseGPTModifier:
      requires_calibration_data: true
      sparsity: 0.5
      mask_structure: '2:4'
      sequential_update: false
      targets: [Linear]
      ignore: ['re:.*lm_head']
      block_size: 128
      dampening_frac: 0.01
      preserve_sparsity_mask: false
      offload_hessians: false
"""

LEGACY_TAG = """sparsity_stage:
  sparsity_modifiers:
    SparseGPTModifier:
      sparsity: 0.5
      mask_structure: '2:4'
      sequential_update: false
      targets: [Linear]
      ignore: ['re:.*lm_head']
  run_type: !!python/object/apply:llmcompressor.recipe.stage.StageRunType [oneshot]
"""

TOP_LEVEL = """SparseGPTModifier:
  sparsity: 0.5
  mask_structure: "2:4"
"""


def run(recipe_text: str, tmp_path, name: str, model, text_file, *extra):
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(recipe_text)
    args = ["run", recipe, model, "--set", f"calibrate.text={text_file}", "--set", "calibrate.nsamples=4",
            "--set", "calibrate.seqlen=32", "--set", "device=cpu", "-q", *extra]
    return runner.invoke(app, [str(a) for a in args])


def masks(out) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v == 0 for k, v in load_file(str(out / "model.safetensors")).items() if v.dim() == 2}


@pytest.fixture(scope="module")
def staged_masks(tiny_model_dir, text_file, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("staged")
    result = run(STAGED, tmp, "staged", tiny_model_dir, text_file, "--out", tmp / "out")
    assert result.exit_code == 0, result.output
    found = masks(tmp / "out")
    pruned = {k: m for k, m in found.items() if m.any()}
    assert len(pruned) == 14 and all(m.float().mean() == 0.5 for m in pruned.values())  # 7 Linears × 2 layers
    return found


@pytest.mark.parametrize("shape", ["flat list", "saved today", "legacy tag", "top level"])
def test_each_shape_prunes_as_the_staged_form(shape, staged_masks, tiny_model_dir, text_file, tmp_path):
    text = {"flat list": FLAT_LIST, "saved today": SAVED_TODAY, "legacy tag": LEGACY_TAG, "top level": TOP_LEVEL}
    result = run(text[shape], tmp_path, "recipe", tiny_model_dir, text_file, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    found = masks(tmp_path / "out")
    assert found.keys() == staged_masks.keys()
    for name, mask in found.items():
        assert torch.equal(mask, staged_masks[name]), name


def test_dry_runs_agree(tiny_model_dir, text_file, tmp_path):
    staged = run(STAGED, tmp_path, "s", tiny_model_dir, text_file, "--dry-run")
    assert staged.exit_code == 0, staged.output
    for text in (FLAT_LIST, SAVED_TODAY, LEGACY_TAG):
        other = run(text, tmp_path, "o", tiny_model_dir, text_file, "--dry-run")
        assert other.exit_code == 0 and other.stdout == staged.stdout, other.output


def test_stages_numbered_when_appended_run_in_order(tiny_model_dir, text_file, tmp_path):
    """llm-compressor numbers stage keys (_0, _1) when it appends a recipe to a saved one."""
    text = ("default_stage_0:\n  default_modifiers:\n    WandaPruningModifier: {sparsity: 0.5, mask_structure: '2:4',"
            " targets: ['re:.*self_attn.*']}\ndefault_stage_1:\n  default_modifiers:\n    SparseGPTModifier: "
            "{sparsity: 0.25, mask_structure: '6:8', ignore: ['re:.*self_attn.*']}\n")
    result = run(text, tmp_path, "r", tiny_model_dir, text_file, "--dry-run")
    assert result.exit_code == 0, result.output
    import yaml

    stages = [item["prune"] for item in yaml.safe_load(result.stdout)["stages"]]
    assert [(s["method"], s["pattern"]) for s in stages] == [("wanda", "2:4"), ("sparsegpt", "6:8")]


REFUSED = {
    "another callable": ("sparsity_stage:\n  run_type: !!python/object/apply:os.system [oneshot]\n"
                         "  sparsity_modifiers:\n    SparseGPTModifier: {sparsity: 0.5}\n", 2, "not allowed"),
    "new instead of apply": ("sparsity_stage:\n  run_type: !!python/object/new:llmcompressor.recipe.stage."
                             "StageRunType [oneshot]\n  sparsity_modifiers:\n    SparseGPTModifier: {sparsity: 0.5}\n",
                             2, "not allowed"),
    "the tag elsewhere": ("sparsity_stage:\n  sparsity_modifiers:\n    SparseGPTModifier:\n      sparsity: !!python/"
                          "object/apply:llmcompressor.recipe.stage.StageRunType [oneshot]\n", 4, "not allowed"),
    "the tag on another value": ("sparsity_stage:\n  run_type: !!python/object/apply:llmcompressor.recipe.stage."
                                 "StageRunType [rm -rf]\n", 2, "holds one value, oneshot or train"),
    "a training stage": ("sparsity_stage:\n  run_type: !!python/object/apply:llmcompressor.recipe.stage.StageRunType "
                         "[train]\n  sparsity_modifiers:\n    SparseGPTModifier: {sparsity: 0.5}\n", 2,
                         "run_type 'train' is not supported"),
    "python name": ("- SparseGPTModifier: !!python/name:os.system {}\n", 1, "not allowed"),
    "OWL": ("- SparseGPTModifier: {sparsity: 0.5, sparsity_profile: owl, owl_m: 5, owl_lmbda: 0.08}\n", 1,
            "sparsity_profile"),
    "list item": ("- SparseGPTModifier: {sparsity: 0.5}\n- GPTQModifier: {}\n", 2, "GPTQModifier is not supported"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_in_one_line(case, tiny_model_dir, text_file, tmp_path):
    text, line, needle = REFUSED[case]
    result = run(text, tmp_path, "bad", tiny_model_dir, text_file, "--out", tmp_path / "out")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output, result.output
    assert f"bad.yaml:{line}:" in lines[0] and needle in lines[0], lines[0]
    assert not (tmp_path / "out").exists()
