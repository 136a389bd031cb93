"""Loading any model the commands accept: a plain checkpoint (compress.model) or a compressed export
(compress.export), which the model room cannot load itself without importing upward."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from compress.errors import BadInput

__all__ = ["load_any", "load_export", "Loaded", "load_placed"]


@dataclass
class Loaded:
    model: object
    tokenizer: object
    source: str  # the resolved model source
    device: str  # where inputs go
    placement: object  # a compress.model.placement.DeviceMap, or None


def load_placed(config, source: str | None) -> Loaded:
    """Load `source` as a LoadConfig says, resolving devices in one place: `device`, or with a device map
    the model's main device; a map that keeps everything on CPU/disk loads for the CPU (dtype auto: float32)."""
    from compress.model.loading import resolve_device
    from compress.model.placement import main_device, parse_device_map

    device = resolve_device(config.device)
    placement = parse_device_map(config.device_map, config.max_memory, config.offload_folder)
    load_device = (placement.compute_device() or device) if placement is not None else device
    model, tokenizer, resolved = load_any(source, config.dtype, load_device, config.trust_remote_code, placement)
    if placement is not None:
        device = str(main_device(model, next(model.parameters()).device))
    return Loaded(model, tokenizer, resolved, device, placement)


def load_export(path, dtype=None, trust_remote_code: bool = False):
    """A directory this tool wrote in its own format: the compressed N:M export (SparseLinear modules) or the
    factorized checkpoint of a family without a stock MoE (FactorizedMLP modules)."""
    from compress.factorize.checkpoint import TENSORS, load_factorized

    if (Path(path) / TENSORS).is_file():
        return load_factorized(path, dtype, trust_remote_code)
    from compress.export.compressed import load

    return load(path, dtype, trust_remote_code)


def load_any(source: str | None, dtype="auto", device: str = "cpu", trust_remote_code: bool = False,
             device_map=None):
    """(model, tokenizer, resolved source); a compressed export comes with SparseLinear modules, a factorized
    checkpoint with FactorizedMLP modules."""
    from compress.model.loading import is_compressed_export, load_model, resolve_dtype

    path = Path(source) if source is not None else None
    if path is None or not is_compressed_export(path):
        return load_model(source, dtype, device, trust_remote_code, device_map)
    from transformers import AutoConfig, AutoTokenizer

    if device_map is not None:
        raise BadInput(f"{source}: a compressed export loads whole; device_map applies to plain checkpoints",
                       key="device_map")
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    torch_dtype = resolve_dtype(dtype, device, config) if isinstance(dtype, str) else dtype
    model = load_export(path, torch_dtype, trust_remote_code)
    model.config.use_cache = False
    return model, AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code), str(path)
