"""Export as a plain Hugging Face checkpoint (zeros in place) with a `compression.json` manifest."""
from __future__ import annotations

from pathlib import Path

from compress.export.atomic import MANIFEST, atomic_directory
from compress.export.marker import write_manifest

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
        write_manifest(tmp, manifest, extra_files)
    return Path(out)
