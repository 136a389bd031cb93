"""`--dtype auto`: float32 on the CPU; on a GPU the dtype the checkpoint records (resolution only, no GPU)."""
import json

import pytest
import torch

from compress.model.loading import load_model, resolve_dtype
from tests.conftest import make_tokenizer, save_tiny_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """dtype name → a tiny checkpoint saved in it."""
    from transformers import AutoModelForCausalLM

    base = save_tiny_model(tmp_path_factory.mktemp("dtype") / "float32")
    paths = {"float32": base}
    for name in ("float16", "bfloat16"):
        model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, name))
        paths[name] = base.parent / name
        model.save_pretrained(paths[name])
        make_tokenizer().save_pretrained(paths[name])
    return paths


@pytest.mark.parametrize("name", ["float16", "bfloat16", "float32"])
def test_auto_on_a_gpu_follows_the_checkpoint(saved, name):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(saved[name])
    assert resolve_dtype("auto", "cuda", config) == getattr(torch, name)
    assert resolve_dtype("auto", "cuda:1", config) == getattr(torch, name)
    assert resolve_dtype("auto", "cpu", config) == torch.float32
    model, _, _ = load_model(str(saved[name]), "auto", "cuda")  # loads on the CPU, in the GPU's dtype
    assert next(model.parameters()).dtype == getattr(torch, name)
    model, _, _ = load_model(str(saved[name]), "auto", "cpu")
    assert next(model.parameters()).dtype == torch.float32


def test_auto_without_a_recorded_dtype_is_bfloat16(saved, tmp_path):
    from transformers import AutoConfig

    config = json.loads((saved["float16"] / "config.json").read_text())
    assert config.pop("dtype", None) or config.pop("torch_dtype", None)
    folder = tmp_path / "no-dtype"
    folder.mkdir()
    for f in saved["float16"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "config.json").write_text(json.dumps(config))
    assert resolve_dtype("auto", "cuda", AutoConfig.from_pretrained(folder)) == torch.bfloat16
    assert resolve_dtype("auto", "cuda") == torch.bfloat16  # no config: a .gguf
    assert next(load_model(str(folder), "auto", "cuda")[0].parameters()).dtype == torch.bfloat16


def test_named_dtypes_ignore_the_checkpoint(saved):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(saved["float16"])
    assert resolve_dtype("bf16", "cuda", config) == torch.bfloat16
    assert resolve_dtype("float32", "cuda", config) == torch.float32
    assert next(load_model(str(saved["float16"]), "float32", "cuda")[0].parameters()).dtype == torch.float32
