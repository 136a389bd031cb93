"""The thread that writes a pass's checkpoint files, and the file format's read and write.

Layers that live on a GPU are handed over as they are, with an event recorded on the pass's stream: the
writer waits for that event on a stream of its own and copies the tensors to host memory there, so the pass
goes on computing while the copy and the write run. The pass never changes a finished layer again, and the
model keeps its tensors alive, so the copy sees exactly the layer as it was handed over.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from pathlib import Path

import torch

from compress.errors import BadInput

__all__ = ["CheckpointWriter", "read_checkpoint", "ready_marker"]


def ready_marker(tensors: dict[str, torch.Tensor]):
    """An event recorded on the pass's current stream of the GPU the tensors live on, or None where every
    tensor is in host memory. All of one hand-over must live on one device."""
    devices = {t.device for t in tensors.values() if t.device.type != "cpu"}
    if not devices:
        return None
    if len(devices) > 1 or next(iter(devices)).type != "cuda":
        raise BadInput(f"a checkpointed layer spans {sorted(map(str, devices))}: only one CUDA device is supported")
    device = next(iter(devices))
    event = torch.cuda.Event()
    event.record(torch.cuda.current_stream(device))
    return device, event


class CheckpointWriter:
    """One thread writing files in the order given; what it meets is raised by the next put() or flush().
    `copy_seconds` is the writer's own time moving tensors from a GPU to host memory."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.copy_seconds = 0.0
        self._jobs: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._streams: dict[torch.device, torch.cuda.Stream] = {}
        self._thread = threading.Thread(target=self._work, name="compress-checkpoint", daemon=True)
        self._thread.start()

    def put(self, name: str, tensors: dict, meta: dict) -> None:
        """Queue `tensors` (host or one GPU's memory; GPU ones must not change or be freed before the
        write) to be written as `name`."""
        self._raise()
        self._jobs.put((name, tensors, meta, ready_marker(tensors)))

    def flush(self) -> None:
        self._jobs.join()
        self._raise()

    def close(self) -> None:
        self._jobs.put(None)
        self._thread.join()

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            if isinstance(error, OSError):
                raise BadInput(f"cannot write checkpoints in {self.folder} ({error.strerror or error})") from error
            raise error

    def _on_host(self, tensors: dict, ready) -> dict:
        if ready is None:
            return tensors
        started, (device, event) = time.perf_counter(), ready
        stream = self._streams.get(device)
        if stream is None:
            stream = self._streams[device] = torch.cuda.Stream(device)
        stream.wait_event(event)
        with torch.cuda.stream(stream):
            # A copy into pageable memory returns when it is done; the pass's stream is not held.
            on_host = {key: t.to("cpu") for key, t in tensors.items()}
        self.copy_seconds += time.perf_counter() - started
        return on_host

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if self._error is None:
                    self._write(*job)
            except BaseException as exc:  # handed to the pass's thread
                self._error = exc
            finally:
                job = None  # the tensors are not kept while waiting for the next job
                self._jobs.task_done()
        self._jobs.task_done()

    def _write(self, name: str, tensors: dict, meta: dict, ready) -> None:
        write_checkpoint(self.folder / name, self._on_host(tensors, ready), meta)


def write_checkpoint(path: Path, tensors: dict, meta: dict) -> None:
    """`tensors` as safetensors at `path`, complete or not at all: a temporary name, fsync, rename."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp")
    save_file({key: t.contiguous() for key, t in tensors.items()}, str(tmp), metadata=meta)
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_checkpoint(path: Path) -> tuple[dict, dict]:
    """(metadata, tensors) of a checkpoint file; BadInput where it is missing, truncated or not safetensors."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {}), {key: f.get_tensor(key) for key in f.keys()}
    except Exception as exc:  # missing, truncated or not safetensors
        raise BadInput(f"{path}: unreadable checkpoint ({exc}); pass --force to start over") from exc
