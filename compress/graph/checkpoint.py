"""Graph checkpoints: model.safetensors + graph.json (the model config) + compression.json (what made it).
Loading builds the model from graph.json and reads tensors with safetensors: no pickle, no code."""
from __future__ import annotations

import json
from pathlib import Path

from compress.errors import BadInput
from compress.paths import user_path

__all__ = ["save_graph_model", "load_graph_model", "CONFIG_FILE", "WEIGHTS_FILE"]

CONFIG_FILE, WEIGHTS_FILE = "graph.json", "model.safetensors"


def save_graph_model(model, out: str | Path, manifest: dict, force: bool = False, inputs: tuple = (),
                     finish=None) -> Path:
    """Write the model completely or not at all (export.atomic); `finish(folder)` adds files before the rename."""
    from safetensors.torch import save_file

    from compress.export.atomic import atomic_directory, check_output_dir
    from compress.export.marker import write_manifest

    path = check_output_dir(out, force, inputs)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_directory(path, force) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(model.config.model_dump_json(indent=2) + "\n")
        write_manifest(tmp, manifest)
        if finish is not None:
            finish(tmp)
    return path


def load_graph_model(checkpoint: str | Path):
    """The GraphGPS model saved at `checkpoint` (a directory), in eval mode on the CPU."""
    from pydantic import ValidationError
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from compress.graph.model import ARCHITECTURE, GraphGPS, GraphModelConfig

    folder = user_path(checkpoint)
    config_file = folder / CONFIG_FILE
    if not folder.is_dir():
        raise BadInput(f"{checkpoint}: no such checkpoint directory", key="checkpoint")
    if not config_file.is_file():
        raise BadInput(f"{checkpoint} is not a graph checkpoint of compress (no {CONFIG_FILE}; "
                       "make one with compress graph train)", key="checkpoint")
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"{config_file}: unreadable ({exc})", key="checkpoint")
    if not isinstance(raw, dict) or raw.get("architecture") != ARCHITECTURE:
        found = raw.get("architecture") if isinstance(raw, dict) else None
        raise BadInput(f"{checkpoint}: architecture {found!r} is not {ARCHITECTURE}", key="checkpoint")
    try:
        config = GraphModelConfig.model_validate(raw)
        model = GraphGPS(config)
        model.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=True)
    except (ValidationError, SafetensorError, RuntimeError, FileNotFoundError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"{checkpoint}: does not load as {ARCHITECTURE} ({first})", key="checkpoint")
    return model.eval()
