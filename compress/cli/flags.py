"""Which CLI flag sets which config key, so errors from configs name the flag the user typed."""
from __future__ import annotations

__all__ = ["label_for_cli", "flag_of"]

TOP = {"model": "MODEL", "out": "--out", "dtype": "--dtype", "device": "--device", "device_map": "--device-map",
       "max_memory": "--max-memory", "offload_folder": "--offload-folder", "trust_remote_code": "--trust-remote-code",
       "kernels": "--kernels", "context": "--context", "tokens": "--max-tokens", "bos": "--no-bos", "gates": "--gate"}
CALIBRATE = {"text": "--text", "dataset": "--dataset", "text_field": "--text-field", "nsamples": "--nsamples",
             "seqlen": "--seqlen", "seed": "--seed", "bos": "--no-bos"}


def _stage_flags() -> dict:
    from compress.pipeline.registry import STAGES

    return {kind: spec.flags or {} for kind, spec in STAGES.items()}


def label_for_cli(path: tuple) -> str:
    """The flag behind a recipe path such as ('stages', 0, 'prune', 'pattern'); the dotted path if none."""
    flag = None
    if len(path) >= 4 and path[0] == "stages":
        flag = _stage_flags().get(path[2], {}).get(path[3])
    elif len(path) >= 2 and path[0] == "calibrate":
        flag = CALIBRATE.get(path[1])
    elif len(path) == 1 or (len(path) == 2 and path[0] == "gates"):
        flag = TOP.get(path[0])
    return flag or ".".join(str(p) for p in path)


def flag_of(key: str) -> str | None:
    """The flag for a bare key raised at run time ("targets", "export.format", "out", ...)."""
    last = key.rsplit(".", 1)[-1]
    if key in TOP:
        return TOP[key]
    for flags in _stage_flags().values():
        if last in flags:
            return flags[last]
    return CALIBRATE.get(last)
