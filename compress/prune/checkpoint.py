"""Per-layer checkpoints of one pruning pass (prune_model), so that a run killed at layer k resumes there.

A pass's folder holds one `layer-NNNNN.safetensors` per finished decoder layer (the layer's tensors after
pruning and its permutations; in its metadata the layer's report entry, its Linears' statistics and their
permutation sites) and `progress.safetensors`: how many layers are done. A resume restores those layers and
rebuilds the calibration hidden states that enter the next one by running the calibration batches through
the restored layers (compress.calibrate.engine.replay_layers: one forward a layer, the pass's own
propagation, so the same states bit for bit); nothing of the pass's activations is written.

One background thread writes the files in the order they are handed over, each under a temporary name,
flushed to disk and renamed, so `progress` never counts a layer whose file is incomplete. The pass hands
over references to the layer's tensors where they live (the pass never touches a finished layer again, and
the end of the pass waits for the writes): in host memory nothing is copied, and from a GPU the writer
thread copies them on a stream of its own (compress/prune/checkpoint_writer.py).

COMPRESS_TEST_KILL_AFTER_LAYER=K is for tests only: the process kills itself with SIGKILL as soon as layer K
(0-based) of a pass is checkpointed (tests/test_resume.py crashes runs with it).
"""
from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict
from pathlib import Path

import torch

from compress.calibrate.engine import LayerInputs, LayerStep, replay_layers
from compress.errors import BadInput
from compress.prune.checkpoint_writer import CheckpointWriter, read_checkpoint

__all__ = ["LayerCheckpoint", "KILL_AFTER_LAYER", "PROGRESS", "layers_done"]

KILL_AFTER_LAYER = "COMPRESS_TEST_KILL_AFTER_LAYER"
PROGRESS = "progress.safetensors"
_STATE, _PERM = "state.", "perm."


def _layer_file(index: int) -> str:
    return f"layer-{index:05d}.safetensors"


class LayerCheckpoint:
    """Save each finished layer of a pass into `folder`, and bring back what an earlier run saved there.

        checkpoint = LayerCheckpoint(folder)
        done = checkpoint.resume(layers, result)   # layers < done restored in place, their report in result
        checkpoint.replay(layers, inputs, device, done)   # the hidden states entering layer `done`
        with checkpoint:                            # waits for the writes at the end of the pass
            ... checkpoint.save(step, layer, result) after each layer ...
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.stats = {"layers_restored": 0, "layers_saved": 0, "bytes_queued": 0, "pass_seconds": 0.0,
                      "flush_seconds": 0.0, "writer_copy_seconds": 0.0, "replay_seconds": 0.0}
        self._names: list[str] = []
        self._writer: CheckpointWriter | None = None

    # -- resuming ------------------------------------------------------------------------------------
    def resume(self, layers: list[tuple[str, torch.nn.Module]], result) -> int:
        """Restore the layers an earlier run finished (weights in place; steps, Linear statistics and
        permutations into `result`, a PruneResult) and return how many there are."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._names = [name for name, _ in layers]
        path = self.folder / PROGRESS
        if not path.exists():
            return 0
        meta, _ = read_checkpoint(path)
        if json.loads(meta.get("names", "null")) != self._names:
            raise BadInput(f"{path}: saved for other decoder layers than this model's; pass --force to start over")
        done = int(meta["done"])
        for index in range(done):
            self._restore_layer(index, layers[index][1], result)
        self.stats["layers_restored"] = done
        return done

    def replay(self, layers: list[tuple[str, torch.nn.Module]], inputs: LayerInputs, device, done: int) -> None:
        """Bring the freshly captured hidden states (those entering layer 0) to those entering layer `done`."""
        started = time.perf_counter()
        replay_layers(layers, inputs, device, done)
        self.stats["replay_seconds"] += time.perf_counter() - started

    def _restore_layer(self, index: int, layer: torch.nn.Module, result) -> None:
        path = self.folder / _layer_file(index)
        meta, tensors = read_checkpoint(path)
        state = layer.state_dict()
        saved = {k[len(_STATE):]: v for k, v in tensors.items() if k.startswith(_STATE)}
        if set(saved) != set(state):
            raise BadInput(f"{path}: holds other tensors than layer {self._names[index]}; pass --force to start over")
        for key, value in saved.items():
            target = state[key]
            if target.shape != value.shape or target.dtype != value.dtype or target.device.type == "meta":
                raise BadInput(f"{path}: {key} does not fit the model's {tuple(target.shape)} {target.dtype} "
                               f"on {target.device}")
            target.copy_(value)
        step = LayerStep(**json.loads(meta["step"]))
        step.info["resumed"] = True
        result.steps.append(step)
        result.linears.update(json.loads(meta["linears"]))
        sites = json.loads(meta["sites"])
        for key, perm in tensors.items():
            if key.startswith(_PERM):
                name = key[len(_PERM):]
                result.permutations[name], result.permutation_sites[name] = perm, sites[name]

    # -- saving --------------------------------------------------------------------------------------
    def save(self, step: LayerStep, layer: torch.nn.Module, result) -> None:
        """Hand layer `step.index` (finished, back in its home memory) to the writer, then the progress that
        counts it."""
        started = time.perf_counter()
        prefix = step.name + "."
        tensors = {_STATE + key: _where_it_lives(value) for key, value in layer.state_dict().items()}
        perms = {name: perm for name, perm in result.permutations.items() if name.startswith(prefix)}
        tensors.update({_PERM + name: perm.detach().to("cpu", copy=True) for name, perm in perms.items()})  # shared
        meta = {"step": json.dumps(asdict(step), default=_plain),
                "linears": json.dumps({k: v for k, v in result.linears.items() if k.startswith(prefix)}),
                "sites": json.dumps({name: result.permutation_sites[name] for name in perms})}
        self._put(_layer_file(step.index), tensors, meta)
        self._put(PROGRESS, {}, {"done": str(step.index + 1), "names": json.dumps(self._names)})
        self.stats["layers_saved"] += 1
        self.stats["pass_seconds"] += time.perf_counter() - started
        if os.environ.get(KILL_AFTER_LAYER) == str(step.index):
            self.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def _put(self, name: str, tensors: dict, meta: dict) -> None:
        self.stats["bytes_queued"] += sum(t.numel() * t.element_size() for t in tensors.values())
        if self._writer is None:
            self._writer = CheckpointWriter(self.folder)
        self._writer.put(name, tensors, meta)

    def flush(self) -> None:
        """Wait until everything handed over is on disk (raises what the writer met)."""
        started = time.perf_counter()
        try:
            if self._writer is not None:
                self._writer.flush()
        finally:
            self.stats["flush_seconds"] += time.perf_counter() - started
            if self._writer is not None:
                self.stats["writer_copy_seconds"] = round(self._writer.copy_seconds, 3)

    def __enter__(self) -> "LayerCheckpoint":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None:
                self.flush()
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None


def layers_done(folder: str | Path) -> tuple[int, int] | None:
    """(layers done, layers) of the pass checkpointed in `folder`, or None where nothing is."""
    from safetensors import safe_open

    path = Path(folder) / PROGRESS
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        return int(meta["done"]), len(json.loads(meta["names"]))
    except Exception:  # absent or unreadable: nothing to count
        return None


def _where_it_lives(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor itself, in host or GPU memory: the pass never changes it again and the writer copies it."""
    if tensor.device.type == "meta":
        raise BadInput("layers offloaded by a device map cannot be checkpointed")
    return tensor.detach()


def _plain(value):
    """JSON for the odd value in a layer's report entry (tensors, numpy numbers)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")
