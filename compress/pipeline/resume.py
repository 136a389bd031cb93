"""Crash-safe runs: a work folder beside the output, OUT.partial, holds the run's lock, its fingerprint and
the per-layer checkpoints of its prune stages (compress.prune.checkpoint).

- One run writes one output: an exclusive lock (flock) on OUT.partial/lock, held for the whole run. A second
  run exits 2 naming the holder. The lock of a killed run goes with its process.
- Leftover checkpoints are never used silently: without resume a run exits 2 saying they are there (resume
  continues them, force starts over); with resume the fingerprint (the sha256 of the model's files and of the
  calibration tokens, the resolved recipe, the versions of compress, torch and transformers) must equal the
  saved one, else the run exits 2 naming what differs.
- The folder is compress's own (its compression.json carries the marker); a folder of that name that is not
  is never touched. It goes once the run has succeeded, and when the run fails on bad input unless it held
  checkpoints of an earlier run; a run that fails otherwise keeps its checkpoints for resume.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from compress.errors import BadInput
from compress.export.marker import MANIFEST, is_ours, write_manifest
from compress.prune.checkpoint import LayerCheckpoint, layers_done

__all__ = ["SUFFIX", "WorkFolder", "resumable", "layer_checkpoint", "fingerprint", "differences", "work_path"]

SUFFIX = ".partial"
LOCK, FINGERPRINT = "lock", "fingerprint.json"
VERSION_KEYS = ("compress", "torch", "transformers")


def work_path(out: Path) -> Path:
    return out.with_name(out.name + SUFFIX)


class WorkFolder:
    """The locked work folder of one run (see the module's docstring). `open` takes the lock; `begin` checks
    or saves the fingerprint once the model is loaded; `close` removes or keeps the folder and unlocks."""

    def __init__(self, path: Path, out: Path, lock_fd: int, had_checkpoints: bool, resume: bool):
        self.path, self.out, self._fd = path, out, lock_fd
        self.had_checkpoints, self.resume, self.resumed = had_checkpoints, resume, False
        self.checkpoints: list[LayerCheckpoint] = []
        self.stats = {"fingerprint_seconds": 0.0, "cleanup_seconds": 0.0}

    @classmethod
    def open(cls, out: Path, resume: bool = False, force: bool = False) -> "WorkFolder":
        path = work_path(out)
        for _ in range(20):  # another run may make or remove the folder meanwhile
            if not (path.exists() or path.is_symlink()):
                fd = _make(path, out)
                if fd is not None:
                    return cls(path, out, fd, False, resume)
                continue
            if path.is_symlink() or not is_ours(path):
                raise BadInput(f"{path} exists and is not a work folder compress made; not touching it: move it away "
                               f"to write {out}")
            fd = _lock(path / LOCK, out)
            if fd is None:
                continue
            folder = cls(path, out, fd, _has_layers(path), resume)
            try:
                folder._settle(force)
            except BaseException:
                folder._unlock()
                raise
            return folder
        raise BadInput(f"{path} kept changing while this run tried to lock it")

    def _settle(self, force: bool) -> None:
        """Leftover checkpoints: kept for resume, cleared by force, else refused; anything else left is cleared."""
        if self.had_checkpoints and self.resume:
            return
        if self.had_checkpoints and not force:
            raise BadInput(f"{self.path} holds the checkpoints of an unfinished run ({self.summary()}): pass --resume "
                           "to continue it, or --force to start over")
        for entry in self.path.iterdir():
            if entry.name not in (MANIFEST, LOCK):
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        self.had_checkpoints = False

    def summary(self) -> str:
        parts = []
        for stage in sorted(p for p in self.path.glob("stage-*") if p.is_dir()):
            counted = layers_done(stage)
            if counted:
                parts.append(f"{stage.name.split('-', 2)[-1]}: {counted[0]} of {counted[1]} layers done")
        return ", ".join(parts) or "no layer finished"

    def compare(self, new: dict) -> None:
        """BadInput naming what differs between `new` (all or part of a fingerprint) and the saved one."""
        path = self.path / FINGERPRINT
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise BadInput(f"{path}: unreadable ({exc}); pass --force to start over") from exc
        found = differences(old, new)
        if found:
            raise BadInput(f"cannot resume from {self.path}: {'; '.join(found)}; pass --force to start over")

    def begin(self, session) -> None:
        """Compare the run's fingerprint with the saved one (resume) or save it (a fresh start)."""
        if _calibrates(session):
            session.calibration()  # drawn for the stages anyway: not a cost of the fingerprint
        started = time.perf_counter()
        new, path = fingerprint(session), self.path / FINGERPRINT
        if path.exists():
            self.compare(new)
            self.resumed = True
            session.progress.stage(f"resuming from {self.path} ({self.summary()})")
        else:
            if self.resume:
                session.progress.stage(f"nothing to resume in {self.path}: starting from the beginning")
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps(new, indent=2) + "\n")
            os.replace(tmp, path)
        self.stats["fingerprint_seconds"] = time.perf_counter() - started

    def checkpoint(self, index: int, kind: str, model, progress) -> LayerCheckpoint | None:
        """The layer checkpoint of stage `index`; None where the model's layers cannot be saved (offloaded)."""
        from compress.model.placement import has_offloaded

        if has_offloaded(model):
            progress.stage("no per-layer checkpoints: the device map offloads layers to cpu/disk")
            return None
        checkpoint = LayerCheckpoint(self.path / f"stage-{index}-{kind}")
        self.checkpoints.append(checkpoint)
        return checkpoint

    def close(self, error: BaseException | None, progress=None) -> None:
        """After the run: remove the folder (success, or bad input with nothing of an earlier run in it) or
        keep it with what was finished; unlock."""
        try:
            bad_input = isinstance(error, BadInput)
            if error is not None and _has_layers(self.path) and (self.had_checkpoints or not bad_input):
                if progress is not None and not bad_input:
                    progress.stage(f"checkpoints kept in {self.path} ({self.summary()}): run again with --resume "
                                   "to continue")
            elif error is None or not self.had_checkpoints:
                started = time.perf_counter()
                _remove(self.path)
                self.stats["cleanup_seconds"] = time.perf_counter() - started
        finally:
            self._unlock()

    def _unlock(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@contextmanager
def resumable(session) -> Iterator[WorkFolder | None]:
    """The session's work folder for the length of the run (None without an output or with resumable off)."""
    if session.out_dir is None or not session.resumable:
        if session.resume:
            raise BadInput("--resume needs an output directory (--out, or out in the recipe)")
        yield None
        return
    folder = WorkFolder.open(session.out_dir, session.resume, session.force)
    try:
        if folder.had_checkpoints:  # what needs no model: refused before loading it
            folder.compare(fingerprint(session, loaded=False))
        yield folder
    except BaseException as error:
        folder.close(error, session.progress)
        raise
    folder.close(None)


def layer_checkpoint(session, config) -> LayerCheckpoint | None:
    """The checkpoint of the session's prune stage `config`, or None when the run keeps none."""
    work = getattr(session, "work", None)
    if work is None:
        return None
    index = next(i for i, stage in enumerate(session.recipe.stages) if stage is config)
    return work.checkpoint(index, config.kind, session.model, session.progress)


# -- the fingerprint -------------------------------------------------------------------------------------
def fingerprint(session, loaded: bool = True) -> dict:
    """What must not change between a run and its resume: the resolved recipe (its out and model path aside:
    the folder is the out, the model is its digest), the versions of the code that computes and, once the
    model is `loaded`, the sha256 of its files and of the calibration tokens."""
    from compress.pipeline.run_report import file_digest, tokens_digest
    from compress.provenance import versions

    recipe = session.recipe.to_dict()
    recipe.pop("out", None)
    recipe.pop("model", None)
    found = versions()
    parts = {"recipe": recipe, "versions": {key: found[key] for key in VERSION_KEYS}}
    if loaded:
        calibration = None
        if _calibrates(session):
            calibration = tokens_digest(session.calibration(), session.report.calibration.source).sha256
        parts.update(model=file_digest(session.report.model).sha256 or session.report.model, calibration=calibration)
    return parts


def _calibrates(session) -> bool:
    from compress.pipeline.registry import STAGES

    return any(STAGES[stage.kind].needs_calibration(stage) for stage in session.recipe.stages)


def differences(old: dict, new: dict) -> list[str]:
    """What differs between a fingerprint and `new` (all of one, or the parts known before loading), in words,
    e.g. 'the recipe differs at calibrate.seed (was 0, now 1)'."""
    found = []
    changed = _changed(old.get("recipe"), new["recipe"])
    if changed:
        found.append("the recipe differs at " + ", ".join(f"{path} (was {a}, now {b})" for path, a, b in changed))
    if "model" in new and old.get("model") != new["model"]:
        found.append(f"the model differs (sha256 was {str(old.get('model'))[:12]}, now {new['model'][:12]})")
    if "calibration" in new and old.get("calibration") != new["calibration"]:
        found.append(f"the calibration tokens differ (sha256 was {str(old.get('calibration'))[:12]}, now "
                     f"{str(new['calibration'])[:12]})")
    then = old.get("versions") or {}
    versions = [f"{key} was {then.get(key)}, now {now}" for key, now in new["versions"].items() if then.get(key) != now]
    if versions:
        found.append("the versions differ: " + ", ".join(versions))
    return found


def _changed(old, new, path: str = "") -> list[tuple[str, str, str]]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for key in list(old) + [k for k in new if k not in old]
                for c in _changed(old.get(key, _UNSET), new.get(key, _UNSET), f"{path}.{key}" if path else str(key))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (a, b) in enumerate(zip(old, new)) for c in _changed(a, b, f"{path}.{i}" if path else str(i))]
    return [] if old == new else [(path or "recipe", _show(old), _show(new))]


_UNSET = object()


def _show(value) -> str:
    return "unset" if value is _UNSET else json.dumps(value, ensure_ascii=False)


# -- the folder and its lock --------------------------------------------------------------------------------
def _make(path: Path, out: Path) -> int | None:
    """Make the folder complete (marker, locked lock file) under a temporary name and rename it into place;
    the lock's descriptor, or None when another run's folder got there first."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    fd = None
    try:
        write_manifest(tmp, {"work_folder_of": str(out), "note": "checkpoints of a compress run that has not "
                             "finished; --resume continues it, --force starts over"})
        fd = os.open(tmp / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _write_holder(fd)
        os.rename(tmp, path)  # fails where a folder with content is there already
        return fd
    except OSError:
        if fd is not None:
            os.close(fd)
        shutil.rmtree(tmp, ignore_errors=True)
        if path.exists():
            return None
        raise


def _lock(path: Path, out: Path) -> int | None:
    """Lock the lock file of an existing folder: its descriptor; None if the folder was replaced or removed
    meanwhile; BadInput naming the holder if another run holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "holder unknown"
        os.close(fd)
        raise BadInput(f"another compress run is writing {out} ({holder}); it holds the lock {path}") from None
    try:
        same = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        same = False
    if not same:
        os.close(fd)
        return None
    _write_holder(fd)
    return fd


def _has_layers(path: Path) -> bool:
    return any(layers_done(stage) for stage in path.glob("stage-*"))


def _write_holder(fd: int) -> None:
    from compress.provenance import now

    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {now()}\n".encode(), 0)


def _remove(path: Path) -> None:
    """Rename the folder aside, then delete it: its name is free at once, never half there."""
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
    os.replace(path, aside / path.name)
    shutil.rmtree(aside, ignore_errors=True)
