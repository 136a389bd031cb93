"""Where outputs go: checked writable before any work, built under temporary names beside their targets,
given the modes a plain mkdir/open gives under the umask (tempfile's, and some writers', 0o700/0o600 would
survive the rename), and renamed into place only when the whole job has succeeded."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator

from compress.errors import BadInput
from compress.export.marker import CHANNEL_BLOCK, is_ours, mark, refuse_unless_ours
from compress.paths import user_path

__all__ = ["check_writable", "check_report_file", "write_report_file", "umask_modes", "replace_folder", "Staging",
           "staged", "current_job"]

_JOB: ContextVar["Staging | None"] = ContextVar("compress_job_staging", default=None)


def _umask() -> int:
    try:  # read without changing it (Linux 4.7+): os.umask can only be read by setting it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_modes(path: Path) -> None:
    """Give `path` (a folder: with everything in it) the mode a plain mkdir/open gives under the umask;
    symbolic links are left alone."""
    mask = _umask()
    paths = [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]
    for p in paths:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def check_writable(path: Path, shown: str | Path, key: str = "out") -> None:
    """Refuse `path` unless its folder exists and takes new entries. A folder is made and removed there to
    see: permission bits do not stop root, and a read-only or special file system stops anyone."""
    parent = path.parent
    if not parent.is_dir():
        found = next((p for p in (parent, *parent.parents) if p.exists()), None)
        if found is not None and not found.is_dir():
            raise BadInput(f"{shown}: {found} is a file, not a folder", key=key)
        raise BadInput(f"{shown}: parent directory {parent} does not exist", key=key)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"{shown}: cannot write in {parent} (permission denied)", key=key)
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".compress-probe-", dir=parent))
    except OSError as exc:
        raise BadInput(f"{shown}: cannot write in {parent} ({exc.strerror or exc})", key=key) from exc


def check_report_file(out: str | Path, key: str | None = None) -> Path:
    """A results file the command writes at its end (a benchmark's --json), checked before the work: absent,
    or a report this tool wrote (write_report_file marks it); anything else there is never replaced."""
    path = user_path(out).absolute()
    if path.is_dir():
        raise BadInput(f"{out} is a directory", key=key)
    if path.exists() or path.is_symlink():
        if not os.access(path, os.W_OK):
            raise BadInput(f"{out}: cannot write it (permission denied)", key=key)
        refuse_unless_ours(path, out, "a report", key=key or "json")
    check_writable(path, out, key)
    return path


def write_report_file(path: Path, report: dict) -> None:
    """`report` as JSON at `path` (checked by check_report_file), with the marker in its "compress" block,
    written beside it and renamed: never a half-written file."""
    marked = {**report, CHANNEL_BLOCK: mark(dict(report.get(CHANNEL_BLOCK) or {}))}
    with staged() as staging:
        staging.file(path, force=True).write_text(json.dumps(marked, indent=2) + "\n")


def replace_folder(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished folder `tmp` to `out`; an `out` already there is replaced only if `force` and it is
    an earlier output of ours (moved aside first, so `out` is never missing or half-written)."""
    if out.exists() or out.is_symlink():
        if not (force and is_ours(out)):
            raise BadInput(f"{out} appeared while writing, and is not an earlier output of compress to replace",
                           key="out")
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)


class Staging:
    """Files and folders a job writes under temporary names beside their targets: publish() renames them
    all into place once the job has succeeded, discard() removes them."""

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path, bool]] = []
        self._folders: list[tuple[Path, Path, bool]] = []

    def folder(self, tmp: Path, target: Path, force: bool) -> None:
        """A finished folder (export.atomic_directory's) that becomes `target` on publish."""
        self._folders.append((Path(tmp), Path(target), force))

    def pending_folder(self, target: Path) -> Path | None:
        """The temporary folder that will become `target`, for files written after it was built (report.json)."""
        return next((tmp for tmp, t, _ in self._folders if t == Path(target)), None)

    def pending(self, target: Path) -> Path | None:
        """The temporary file that will become `target`, for a later stage of the job that reads it."""
        return next((tmp for tmp, t, _ in self._pending if t == Path(target)), None)

    def file(self, target: Path, force: bool) -> Path:
        """A temporary file that becomes `target` on publish (replacing it only if `force` and it is ours)."""
        handle, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
        os.close(handle)
        self._pending.append((Path(tmp), target, force))
        return Path(tmp)

    def publish(self) -> None:
        for _, target, force in self._pending + self._folders:  # every target first: all are renamed or none
            if target.exists() or target.is_symlink():
                if not force:
                    raise BadInput(f"{target} appeared while writing; not replacing it", key="out")
                refuse_unless_ours(target, target)
        for tmp, target, force in self._folders:
            umask_modes(tmp)
            replace_folder(tmp, target, force)
        for tmp, target, _ in self._pending:
            umask_modes(tmp)
            os.replace(tmp, target)
        self._pending, self._folders = [], []

    def discard(self) -> None:
        for tmp, _, _ in self._pending:
            tmp.unlink(missing_ok=True)
        for tmp, _, _ in self._folders:
            shutil.rmtree(tmp, ignore_errors=True)
        self._pending, self._folders = [], []


def current_job() -> Staging | None:
    """The Staging of the job running in this context (staged() without one sets it), or None."""
    return _JOB.get()


@contextmanager
def staged(staging: Staging | None = None) -> Iterator[Staging]:
    """Yield a Staging published when the block succeeds and discarded if it fails; given one (a job's),
    yield it untouched: the job publishes it at its end."""
    if staging is not None:
        yield staging
        return
    staging = Staging()
    token = _JOB.set(staging)  # folders finished inside the block (atomic_directory) wait for its end
    try:
        yield staging
        staging.publish()
    except BaseException:
        staging.discard()
        raise
    finally:
        _JOB.reset(token)
