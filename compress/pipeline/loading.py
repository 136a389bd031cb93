"""Loading any model the commands accept: a plain checkpoint (compress.model) or a compressed export
(compress.export), which the model room cannot load itself without importing upward."""
from __future__ import annotations

from pathlib import Path

from compress.errors import BadInput

__all__ = ["load_any"]


def load_any(source: str | None, dtype="auto", device: str = "cpu", trust_remote_code: bool = False,
             device_map=None):
    """(model, tokenizer, resolved source); a compressed export comes with SparseLinear modules."""
    from compress.model.loading import is_compressed_export, load_model, resolve_dtype

    path = Path(source) if source is not None else None
    if path is None or not is_compressed_export(path):
        return load_model(source, dtype, device, trust_remote_code, device_map)
    from transformers import AutoConfig, AutoTokenizer

    from compress.export.compressed import load

    if device_map is not None:
        raise BadInput(f"{source}: a compressed export loads whole; device_map applies to plain checkpoints",
                       key="device_map")
    config = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    torch_dtype = resolve_dtype(dtype, device, config) if isinstance(dtype, str) else dtype
    model = load(path, torch_dtype, trust_remote_code)
    model.config.use_cache = False
    return model, AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code), str(path)
