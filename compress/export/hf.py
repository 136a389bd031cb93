"""Export as a plain Hugging Face checkpoint (zeros in place) with a `compression.json` manifest."""
from __future__ import annotations

import json
from pathlib import Path

from compress.export.atomic import atomic_directory

__all__ = ["save_checkpoint", "MANIFEST"]

MANIFEST = "compression.json"


def save_checkpoint(model, tokenizer, out: str | Path, manifest: dict, force: bool = False) -> Path:
    """Write model (safetensors), tokenizer and manifest to `out` atomically; the model is not changed."""
    with atomic_directory(out, force) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    return Path(out)
