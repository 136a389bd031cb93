"""Write a directory completely or not at all: build it beside the target, then rename."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from compress.errors import BadInput

__all__ = ["check_output_dir", "atomic_directory"]


def check_output_dir(out: str | Path, force: bool, inputs: tuple[str | Path | None, ...] = ()) -> Path:
    """Refuse an output that exists (unless `force`) or that is one of the inputs; return it resolved."""
    path = Path(out).expanduser().resolve()
    for source in inputs:
        if source is not None and Path(source).expanduser().exists():
            src = Path(source).expanduser().resolve()
            if path == src or src in path.parents or path in src.parents:
                raise BadInput(f"--out {out} would overwrite the input model {source}")
    if path.exists() and not force:
        raise BadInput(f"--out {out} already exists (use --force to replace it)")
    if path.exists() and not path.is_dir():
        raise BadInput(f"--out {out} exists and is not a directory")
    if not path.parent.is_dir():
        raise BadInput(f"--out {out}: parent directory {path.parent} does not exist")
    return path


@contextmanager
def atomic_directory(out: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `out` when the block succeeds and vanishes if it fails."""
    out = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        if out.exists():
            if not force:
                raise BadInput(f"{out} appeared while writing (use --force to replace it)")
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
