"""A factorized model of a family with no stock MoE counterpart (Gemma, Gemma3), saved for `compress.load`.

The directory holds the dense model's config.json and tokenizer, `factorized.safetensors` (the model's own
state dict: each factorized MLP as gate_up (E, 2m, hidden), down (E, hidden, m), router.weight and groups, and
where it has shared neurons shared_gate_up (2s, hidden), shared_down (hidden, s) and shared)
and compression.json, whose "format" names every factorized MLP with E, k and the fold. `load_factorized`
builds the dense architecture from the config, swaps each named MLP for a FactorizedMLP of those shapes
(keeping the MLP's own act_fn) and loads the tensors strictly. transformers alone cannot load it (there is no
model.safetensors), so it is never mistaken for the dense model.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from compress.errors import BadInput
from compress.export.atomic import MANIFEST
from compress.export.compressed import load_tensors_into, untied_state_dict, write_tensor_checkpoint
from compress.factorize.mlp import find_gated_mlp
from compress.factorize.moe import FactorizedMLP

__all__ = ["FORMAT", "TENSORS", "save_factorized", "load_factorized"]

FORMAT = {"name": "compress-factorized", "version": 1}
TENSORS = "factorized.safetensors"


def save_factorized(model, tokenizer, out: str | Path, manifest: dict, force: bool = False,
                    extra_files: dict[str, str] | None = None) -> Path:
    mlps = {name: {"experts": m.num_experts, "top_k": m.top_k, "fold": m.fold, "width": m.down.shape[2],
                   "shared": m.shared_width}
            for name, m in model.named_modules() if isinstance(m, FactorizedMLP)}
    if not mlps:
        raise BadInput("the model has no factorized MLPs to save")
    tensors = untied_state_dict(model)
    for name, moe in model.named_modules():
        if isinstance(moe, FactorizedMLP):
            tensors[f"{name}.groups"] = moe.groups
            if moe.shared is not None:
                tensors[f"{name}.shared"] = moe.shared
    manifest = {**manifest, "format": {**FORMAT, "mlps": mlps}}
    return write_tensor_checkpoint(model, tokenizer, out, TENSORS, tensors, manifest, force, extra_files)


def load_factorized(path: str | Path, dtype=None, trust_remote_code: bool = False):
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    fmt = json.loads((path / MANIFEST).read_text()).get("format", {})
    if fmt.get("name") != FORMAT["name"] or not (path / TENSORS).is_file():
        raise BadInput(f"{path}: not a factorized checkpoint (no {TENSORS} or format {FORMAT['name']})")
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    tensors = load_file(str(path / TENSORS))
    dtype = dtype or next(t.dtype for t in tensors.values() if t.is_floating_point())
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    for name, spec in fmt["mlps"].items():
        layer_name, _, _ = name.rpartition(".")
        mlp = find_gated_mlp(model.get_submodule(layer_name), layer_name)
        if mlp.name != name:
            raise BadInput(f"{path}: {name} is not the gated MLP of {layer_name}")
        experts, width, hidden = spec["experts"], spec["width"], mlp.gate.in_features
        shared, parts = spec.get("shared", 0), {}
        if shared:
            parts = {"shared_gate_up": torch.zeros(2 * shared, hidden, dtype=dtype),
                     "shared_down": torch.zeros(hidden, shared, dtype=dtype), "shared": tensors.pop(f"{name}.shared")}
        moe = FactorizedMLP(torch.zeros(experts, 2 * width, hidden, dtype=dtype), torch.zeros(experts, hidden, width, dtype=dtype),
                            mlp.act_fn, spec["top_k"], tensors.pop(f"{name}.groups"), spec["fold"], **parts)
        setattr(mlp.parent, mlp.attribute, moe)
    return load_tensors_into(model, tensors, path)
