"""The marker that makes an output this tool's: `--force` replaces a file or folder only when it carries it.

Every writer puts KEY: SIGNATURE where its readers ignore extra entries: at the top of a folder's
compression.json, in a channel file's "compress" block, in a safetensors file's metadata, in an HTML report's
<meta name="written_by"> tag in its head. A key name alone (a "compress" block, a file called compression.json)
is not enough: another program may write those.
Outputs of versions before the marker carry none and are refused like anyone else's.
"""
from __future__ import annotations

import json
from pathlib import Path

from compress.errors import BadInput

__all__ = ["KEY", "SIGNATURE", "MANIFEST", "HTML_META", "mark", "is_ours", "refuse_unless_ours", "write_manifest"]

KEY = "written_by"
SIGNATURE = "compress post-training compression toolkit; --force may replace this output"
MANIFEST = "compression.json"
CHANNEL_BLOCK = "compress"  # the channel file's own block (compress.attention.calibration.channels.EXTRA)
HTML_META = f'<meta name="{KEY}" content="{SIGNATURE}">'  # in the <head> of an HTML report (compress report)
HTML_HEAD_BYTES = 4096  # the tag is looked for only this far into the file: in the head, not in the body


def mark(block: dict) -> dict:
    """`block` with the marker added (in place)."""
    block[KEY] = SIGNATURE
    return block


def _marked(block) -> bool:
    return isinstance(block, dict) and block.get(KEY) == SIGNATURE


def _json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _safetensors_marked(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return _marked(f.metadata() or {})
    except Exception:  # not a safetensors file at all
        return False


def _html_marked(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(HTML_HEAD_BYTES)
    except OSError:
        return False
    head = head.split(b"</head>", 1)[0] if b"</head>" in head else b""  # the tag counts only inside the head
    return HTML_META.encode() in head


def is_ours(path: str | Path) -> bool:
    """Whether `path` is an output this tool wrote: a folder whose compression.json carries the marker, a
    safetensors file whose metadata does, a JSON file whose "compress" block does, an HTML file whose head
    holds HTML_META. Never a symbolic link."""
    path = Path(path)
    if path.is_symlink():
        return False
    if path.is_dir():
        manifest = path / MANIFEST
        return manifest.is_file() and not manifest.is_symlink() and _marked(_json(manifest))
    if not path.is_file():
        return False
    if path.suffix == ".safetensors":
        return _safetensors_marked(path)
    if path.suffix in (".html", ".htm"):
        return _html_marked(path)
    data = _json(path)
    return isinstance(data, dict) and _marked(data.get(CHANNEL_BLOCK))


def refuse_unless_ours(path: Path, shown: str | Path, what: str = "an output", key: str = "out") -> None:
    """BadInput unless `path` is this tool's output (see is_ours); `what` it would be, for the message."""
    if not is_ours(path):
        raise BadInput(f"{shown} is not {what} compress wrote (no marker of compress: another program's, or from a "
                       "version before outputs were marked); not replacing it: delete it by hand to reuse the name",
                       key=key)


def write_manifest(folder: Path, manifest: dict, extra_files: dict[str, str] | None = None) -> None:
    """compression.json with the marker, and `extra_files` ({file name: text}), into the folder being built."""
    (folder / MANIFEST).write_text(json.dumps({KEY: SIGNATURE, **manifest}, indent=2) + "\n")
    for name, text in (extra_files or {}).items():
        (folder / name).write_text(text)
