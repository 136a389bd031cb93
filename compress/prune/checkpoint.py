"""Per-layer checkpoints of one pruning pass (prune_model), so that a run killed at layer k resumes there.

A pass's folder holds one `layer-NNNNN.safetensors` per finished decoder layer (the layer's tensors after
pruning and its permutations; in its metadata the layer's report entry, its Linears' statistics and their
permutation sites) and `progress.safetensors`: how many layers are done, with the calibration hidden states
that enter the next one. Those are the only activations the rest of the pass needs: the layers' other inputs
(mask, positions) are captured again from the embeddings.

One background thread writes the files in the order they are handed over, each under a temporary name,
flushed to disk and renamed, so `progress` never counts a layer whose file is incomplete. The pass hands
over references to the layer's tensors where they live (the pass never touches a finished layer again, and
the end of the pass waits for the writes): on the CPU nothing is copied, and from a GPU the writer thread
copies them to host memory on a stream of its own (compress/prune/checkpoint_writer.py). The hidden states
are another matter: the next layer replaces them, so the pass copies them itself (on a GPU, a device-to-host
copy), and only while the pass's time spent on checkpoints stays within `share` of its wall time (5%), and
not while the previous copy is still being written. A resume restarts after the last layer whose hidden
states were kept: at most about (copy time / share) of work is done again.

COMPRESS_TEST_KILL_AFTER_LAYER=K is for tests only: the process kills itself with SIGKILL as soon as layer K
(0-based) of a pass is checkpointed, hidden states included (tests/test_resume.py crashes runs with it).
"""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import asdict
from pathlib import Path

import torch

from compress.calibrate.engine import LayerInputs, LayerStep
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
        with checkpoint:                            # waits for the writes at the end of the pass
            ... checkpoint.save(step, layer, inputs, result) after each layer ...
    """

    def __init__(self, folder: str | Path, share: float = 0.05):
        self.folder, self.share = Path(folder), share
        self.stats = {"layers_restored": 0, "layers_saved": 0, "hidden_saved": 0, "hidden_skipped": 0,
                      "bytes_queued": 0, "pass_seconds": 0.0, "flush_seconds": 0.0,
                      "writer_copy_seconds": 0.0}
        self._names: list[str] = []
        self._hidden: list[torch.Tensor] | None = None
        self._writer: CheckpointWriter | None = None
        self._hidden_pending = threading.Event()
        self._started = time.perf_counter()
        self._copy_rate = 2e9  # bytes/s of the hidden-state copy, until one is measured

    # -- resuming ------------------------------------------------------------------------------------
    def resume(self, layers: list[tuple[str, torch.nn.Module]], result) -> int:
        """Restore the layers an earlier run finished (weights in place; steps, Linear statistics and
        permutations into `result`, a PruneResult) and return how many there are."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._names = [name for name, _ in layers]
        self._started = time.perf_counter()
        path = self.folder / PROGRESS
        if not path.exists():
            return 0
        meta, hidden = read_checkpoint(path)
        if json.loads(meta.get("names", "null")) != self._names:
            raise BadInput(f"{path}: saved for other decoder layers than this model's; pass --force to start over")
        done = int(meta["done"])
        for index in range(done):
            self._restore_layer(index, layers[index][1], result)
        self._hidden = [hidden[f"hidden.{i}"] for i in range(len(hidden))] if done < len(layers) else None
        self.stats["layers_restored"] = done
        return done

    def restore_inputs(self, inputs: LayerInputs) -> None:
        """Replace the freshly captured hidden states (those entering layer 0) by the saved ones."""
        saved = self._hidden or []
        fresh = inputs.hidden
        if len(saved) != len(fresh) or any(s.shape != f.shape or s.dtype != f.dtype for s, f in zip(saved, fresh)):
            raise BadInput(f"{self.folder / PROGRESS}: its hidden states do not fit these calibration batches; "
                           "pass --force to start over")
        inputs.hidden[:] = [s.to(f.device) for s, f in zip(saved, fresh)]
        self._hidden = None

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
    def save(self, step: LayerStep, layer: torch.nn.Module, inputs: LayerInputs | None, result) -> None:
        """Hand layer `step.index` (finished, back in its home memory) to the writer; with it, when the share
        allows, the hidden states `inputs` now holds (those entering the next layer)."""
        started = time.perf_counter()
        prefix = step.name + "."
        tensors = {_STATE + key: _where_it_lives(value) for key, value in layer.state_dict().items()}
        perms = {name: perm for name, perm in result.permutations.items() if name.startswith(prefix)}
        tensors.update({_PERM + name: perm.detach().to("cpu", copy=True) for name, perm in perms.items()})  # shared
        meta = {"step": json.dumps(asdict(step), default=_plain),
                "linears": json.dumps({k: v for k, v in result.linears.items() if k.startswith(prefix)}),
                "sites": json.dumps({name: result.permutation_sites[name] for name in perms})}
        self._put(_layer_file(step.index), tensors, meta)
        self.stats["layers_saved"] += 1
        done = step.index + 1
        kill = os.environ.get(KILL_AFTER_LAYER) == str(step.index)
        if inputs is None or done == len(self._names):
            self._put_progress(done, None)
        elif kill or (not self._hidden_pending.is_set() and self._within_share(inputs.hidden)):
            self._put_progress(done, self._copy(inputs.hidden))
        else:
            self.stats["hidden_skipped"] += 1
        self.stats["pass_seconds"] += time.perf_counter() - started
        if kill:
            self.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def _within_share(self, hidden: list[torch.Tensor]) -> bool:
        estimate = sum(h.numel() * h.element_size() for h in hidden) / self._copy_rate
        elapsed = time.perf_counter() - self._started
        return self.stats["pass_seconds"] + estimate <= self.share * elapsed

    def _copy(self, hidden: list[torch.Tensor]) -> list[torch.Tensor]:
        started = time.perf_counter()
        copies = [h.detach().to("cpu", copy=True) for h in hidden]
        size = sum(c.numel() * c.element_size() for c in copies)
        self._copy_rate = size / max(time.perf_counter() - started, 1e-6)
        return copies

    def _put(self, name: str, tensors: dict, meta: dict, after=None) -> None:
        self.stats["bytes_queued"] += sum(t.numel() * t.element_size() for t in tensors.values())
        if self._writer is None:
            self._writer = CheckpointWriter(self.folder)
        self._writer.put(name, tensors, meta, after)

    def _put_progress(self, done: int, hidden: list[torch.Tensor] | None) -> None:
        meta = {"done": str(done), "names": json.dumps(self._names)}
        tensors = {f"hidden.{i}": h for i, h in enumerate(hidden or [])}
        if hidden is not None:
            self._hidden_pending.set()
            self.stats["hidden_saved"] += 1
        self._put(PROGRESS, tensors, meta, after=self._hidden_pending.clear if hidden is not None else None)

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
