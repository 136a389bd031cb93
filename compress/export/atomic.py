"""Write a directory completely or not at all: build it beside the target, then rename.

Replacing (`force`) only ever touches a directory that holds a previous output of this tool, recognised
by its compression.json; anything else is refused, so nothing this tool did not write is deleted.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from compress.errors import BadInput
from compress.paths import user_path

__all__ = ["check_output_dir", "atomic_directory", "MANIFEST"]

MANIFEST = "compression.json"


def _ours(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and (path / MANIFEST).is_file()


def check_output_dir(out: str | Path, force: bool, inputs: tuple[str | Path | None, ...] = ()) -> Path:
    """Refuse an output that exists (unless `force` and it is an earlier output of ours) or that is one
    of the inputs; return it resolved."""
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
    if path.exists() and not _ours(path):
        raise BadInput(f"{out} exists and holds no {MANIFEST}: only an earlier output of compress is "
                       "replaced", key="out")
    if not path.parent.is_dir():
        raise BadInput(f"{out}: parent directory {path.parent} does not exist", key="out")
    return path


@contextmanager
def atomic_directory(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `out` when the block succeeds and vanishes if it fails."""
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists() or out.is_symlink():
            if not (force and _ours(out)):
                raise BadInput(f"{out} appeared while writing, and is not an earlier output of compress to replace",
                               key="out")
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
