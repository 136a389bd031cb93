"""Write a directory completely or not at all: build it beside the target, then rename.

Replacing (`force`) only ever touches a directory that holds a previous output of this tool, recognised
by the marker in its compression.json (export.marker); anything else is refused, so nothing this tool did
not write is deleted. The folder and its files get the modes a plain mkdir/open gives under the umask.
"""
from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from compress.errors import BadInput
from compress.export.marker import MANIFEST, is_ours, refuse_unless_ours
from compress.export.outputs import check_writable, current_job, replace_folder, umask_modes
from compress.paths import user_path

__all__ = ["check_output_dir", "atomic_directory", "MANIFEST"]


def check_output_dir(out: str | Path, force: bool, inputs: tuple[str | Path | None, ...] = ()) -> Path:
    """Refuse an output that exists (unless `force` and it is an earlier output of ours), that is one of
    the inputs, or whose folder takes no new entries; return it resolved."""
    path = user_path(out).absolute()
    resolved = path.resolve()
    for source in inputs:
        if source is not None and user_path(source).exists():
            src = user_path(source).resolve()
            if resolved == src or src in resolved.parents or resolved in src.parents:
                raise BadInput(f"{out} would overwrite the input model {source}", key="out")
    if resolved in Path.cwd().resolve().parents or resolved == Path.cwd().resolve():
        raise BadInput(f"{out} is the current directory or one above it", key="out")
    if path.is_symlink():
        raise BadInput(f"{out} is a symbolic link", key="out")
    if path.exists() and not path.is_dir():
        raise BadInput(f"{out} exists and is not a directory", key="out")
    if path.exists() and not force:
        raise BadInput(f"{out} already exists (force replaces an earlier output of compress)", key="out")
    if path.exists():
        refuse_unless_ours(path, out)
    check_writable(path, out)
    return path


@contextmanager
def atomic_directory(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `out` when the block succeeds (inside a job, when the job
    does: export.outputs.staged) and vanishes if it fails."""
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    job = current_job()
    try:
        yield tmp
        if not is_ours(tmp):  # every writer marks what it writes (export.marker.write_manifest)
            raise RuntimeError(f"the writer of {out} left no {MANIFEST} with the marker of compress")
        if job is not None:  # inside a job: renamed with its other outputs when the whole job has succeeded
            job.folder(tmp, out, force)
            return
        umask_modes(tmp)
        replace_folder(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
