"""Export and load the compressed N:M checkpoint that runs on SparseLinear.

Layout of the directory: config.json and tokenizer files as in any HF checkpoint; compression.json (the
manifest, with a "format" section); compressed.safetensors holding every tensor of the model except
the weights of the pruned Linears, which are stored as
  <name>.nm_values  (rows, K·N/M) kept values, in the model dtype
  <name>.nm_mask    (rows, ceil(K/8)) uint8 packed bits, bit j%8 of byte j//8 = column j kept
  <name>.nm_perm    (K,) int64, only where the weight is stored in permuted input order
(see compress/kernels/nm_format.py). Tied weights are stored once.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from compress.errors import BadInput
from compress.export.atomic import atomic_directory
from compress.export.hf import MANIFEST
from compress.export.marker import write_manifest

__all__ = ["save_compressed", "load", "COMPRESSED", "untied_state_dict", "write_tensor_checkpoint", "load_tensors_into"]

COMPRESSED = "compressed.safetensors"
FORMAT = {"name": "compress-nm", "version": 1, "file": COMPRESSED,
          "tensors": {"nm_values": "kept values, row-major", "nm_mask": "uint8 packed keep bits, little-endian",
                      "nm_perm": "input permutation: the stored weight is W[:, perm]"}}


def save_compressed(model, tokenizer, out: str | Path, manifest: dict, pattern, linears: list[str],
                    permutations: dict[str, torch.Tensor] | None = None, force: bool = False,
                    extra_files: dict[str, str] | None = None) -> Path:
    """Write the compressed checkpoint. `permutations` are the indices still carried (the caller folds
    the foldable ones into the model first: compress.permute.fold_into_model)."""
    from compress.kernels.nm_format import pack_nm

    if not pattern.is_nm:
        raise BadInput("the compressed export needs an N:M pattern", key="export.format")
    permutations = permutations or {}
    tensors = untied_state_dict(model)
    for name in linears:
        weight = tensors.pop(f"{name}.weight")
        perm = permutations.get(name)
        values, mask = pack_nm(weight if perm is None else weight[:, perm], pattern.n, pattern.m)
        tensors[f"{name}.nm_values"], tensors[f"{name}.nm_mask"] = values, mask
        if perm is not None:
            tensors[f"{name}.nm_perm"] = perm.to(torch.int64).clone()  # stacked Linears share one index
    manifest = {**manifest, "format": {**FORMAT, "pattern": [pattern.n, pattern.m], "linears": linears}}
    return write_tensor_checkpoint(model, tokenizer, out, COMPRESSED, tensors, manifest, force, extra_files)


def untied_state_dict(model) -> dict[str, torch.Tensor]:
    """The model's tensors, each storage once (a tied tensor is stored once; from_config ties it again)."""
    tensors, seen = {}, set()
    for key, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            tensors[key] = tensor
    return tensors


def write_tensor_checkpoint(model, tokenizer, out: str | Path, file: str, tensors: dict[str, torch.Tensor],
                            manifest: dict, force: bool = False, extra_files: dict[str, str] | None = None) -> Path:
    """config.json, tokenizer, `file` (safetensors) and the manifest, written atomically to `out`."""
    from safetensors.torch import save_file

    with atomic_directory(out, force) as tmp:
        model.config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp / file))
        write_manifest(tmp, manifest, extra_files)
    return Path(out)


def load_tensors_into(model, tensors: dict[str, torch.Tensor], path: Path, replaced: tuple[str, ...] = ()):
    """Load `tensors` into the model built from its config; only tied weights and the tensors of the
    `replaced` modules may be absent. BadInput on any other mismatch; the model in eval mode."""
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {k for k in missing if k.endswith(".weight") and getattr(model.config, "tie_word_embeddings", False)}
    swapped = {k for k in missing if any(k.startswith(f"{name}.") for name in replaced)}
    if unexpected or set(missing) - tied - swapped:
        raise BadInput(f"{path}: tensors do not match the config (missing {sorted(set(missing) - tied - swapped)[:3]}, "
                       f"unexpected {sorted(unexpected)[:3]})")
    model.tie_weights()
    return model.eval()


def load(path: str | Path, dtype=None, trust_remote_code: bool = False):
    """A model whose pruned Linears are SparseLinear modules, from a compressed export."""
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    from compress.kernels.sparse_linear import SparseLinear

    path = Path(path)
    manifest_file = path / MANIFEST
    if not manifest_file.is_file() or not (path / COMPRESSED).is_file():
        raise BadInput(f"{path}: not a compressed export (no {MANIFEST} or {COMPRESSED})")
    fmt = json.loads(manifest_file.read_text()).get("format", {})
    if fmt.get("name") != FORMAT["name"]:
        raise BadInput(f"{path}: unknown compressed format {fmt.get('name')!r}")
    n, m = fmt["pattern"]
    config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    tensors = load_file(str(path / COMPRESSED))
    stored_dtype = next(t.dtype for t in tensors.values() if t.is_floating_point())
    dtype = dtype or stored_dtype
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    for name in fmt["linears"]:
        parent_name, _, child = name.rpartition(".")
        linear = model.get_submodule(name)
        bias = tensors.pop(f"{name}.bias", None)
        sparse = SparseLinear(tensors.pop(f"{name}.nm_values").to(dtype), tensors.pop(f"{name}.nm_mask"), linear.in_features,
                              n, m, None if bias is None else bias.to(dtype), tensors.pop(f"{name}.nm_perm", None))
        setattr(model.get_submodule(parent_name), child, sparse)
    return load_tensors_into(model, tensors, path, tuple(fmt["linears"]))
