"""Export as a plain Hugging Face checkpoint (zeros in place) with a `compression.json` manifest."""
from __future__ import annotations

import json
from pathlib import Path

from compress.export.atomic import MANIFEST, atomic_directory

__all__ = ["save_checkpoint", "MANIFEST"]

PERMUTATIONS = "permutations.safetensors"


def save_checkpoint(model, tokenizer, out: str | Path, manifest: dict, force: bool = False,
                    extra_tensors: dict | None = None, extra_files: dict[str, str] | None = None) -> Path:
    """Write model (safetensors), tokenizer and manifest to `out` atomically; the model is not changed.

    `extra_tensors` (e.g. the permutation index of each Linear) go to permutations.safetensors;
    `extra_files` are {file name: text} (e.g. the recipe).
    """
    with atomic_directory(out, force) as tmp:
        if extra_tensors:
            from safetensors.torch import save_file

            save_file({k: v.clone() for k, v in extra_tensors.items()}, str(tmp / PERMUTATIONS))  # no shared storage
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return Path(out)
