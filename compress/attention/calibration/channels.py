"""The channel file: which channels of each head carry most of Q·K, by descending importance.

The layout is the reference's (andy-yang-1/DoubleSparse) and SGLang's, so either can read it:

    {"model.layers.{i}.self_attn.{mode}_proj": [[c0, c1, ..., c_{head_dim-1}], ...one row per head]}

Each row is a full permutation of range(head_dim), most important channel first; rows are attention
heads for modes `qk` and `q`, key/value heads for `k`. Channel c of head h is output dim h·head_dim + c
of q_proj/k_proj as Hugging Face lays it out (rotate_half pairs c and c + head_dim/2). A reader keeps
`row[:r]` for r heavy channels.

Extra key (ignored by readers that look up layer keys only): "compress" holds
  written_by  the marker of compress (compress.export.marker): --force replaces only a file that carries it
  format      1
  mode        qk | q | k
  model       {model_type, num_layers, num_heads, num_kv_heads, head_dim}: files from another model are refused
  kv_heads    {layer key: one permutation per key/value head}: the GQA-aware selection, ranked by the
              statistic summed over the query heads that share that key/value head
  windows, tokens  calibration windows and tokens the statistics were accumulated over
  position_prior  {"buckets", "exact", "layers": {layer key: one row of bucket values per key/value head}}:
              the position prior (compress.attention.calibration.prior), read by eval --position-prior
  projection  (files calibrated with --projection) {"file": the safetensors beside this file holding the
              projected labels' maps (compress.attention.calibration.projection), "method": "whitened-svd", "sha256": its
              digest when written (a later, different file is refused)}
"""
from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from compress.errors import BadInput
from compress.export.marker import mark, refuse_unless_ours
from compress.export.outputs import Staging, check_writable, staged
from compress.model.roles import HeadLayout
from compress.paths import user_path

__all__ = ["MODES", "EXTRA", "layer_key", "ranking", "ChannelFile", "write_channel_file", "read_channel_file"]

MODES = ("qk", "q", "k")
EXTRA = "compress"
FORMAT = 1


def layer_key(index: int, mode: str) -> str:
    return f"model.layers.{index}.self_attn.{mode}_proj"


def ranking(importance: torch.Tensor) -> torch.Tensor:
    """Rows of channel indices by descending importance (ties: lower index first); (rows, head_dim)."""
    return torch.sort(importance.double(), dim=-1, descending=True, stable=True).indices


@dataclass
class ChannelFile:
    mode: str
    layout: HeadLayout
    model_type: str
    rows: list[torch.Tensor]  # per layer: (heads or kv heads, head_dim) permutations
    kv_rows: list[torch.Tensor]  # per layer: (kv heads, head_dim) permutations
    projection_file: Path | None = None  # the projected labels' maps, when the file names them
    prior: list[torch.Tensor] | None = None  # per layer: (kv heads, buckets) position prior, when recorded
    source: str = ""
    projection_digest: str | None = None  # sha256 of the projection file as written with this file
    calibration_length: int | None = None  # tokens per calibration window, when recorded

    def heavy(self, layer: int, channels: int, per_kv_head: bool) -> torch.Tensor:
        """(heads, channels) heavy channel indices each query head reads its labels with: its own row
        (modes qk/q), its key/value head's row (mode k, or `per_kv_head`)."""
        layout = self.layout
        if per_kv_head or self.mode == "k":
            rows = self.kv_rows[layer]
            return rows[layout.kv_of_head(), :channels]
        return self.rows[layer][:, :channels]

    def position_prior(self) -> list[torch.Tensor]:
        """Per layer (kv heads, buckets): the recorded position prior; a file without one is refused."""
        if self.prior is None:
            raise BadInput(f"{self.source}: has no position prior (calibrate it again with this version)",
                           key="position_prior")
        return self.prior

    def projection(self, rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (A, B), each (kv_heads, head_dim, rank): the projected labels' maps at `rank`."""
        from compress.attention.calibration.projection import read_projection

        if self.projection_file is None:
            raise BadInput(f"{self.source}: has no projected labels (calibrate it with --projection)", key="labels")
        if self.projection_digest is not None and self.projection_file.is_file() and \
                _digest(self.projection_file) != self.projection_digest:
            raise BadInput(f"{self.source}: its projection file {self.projection_file} was replaced after it was "
                           "written (calibrate again)", key="labels")
        maps = read_projection(self.projection_file, len(self.rows), self.layout.num_kv_heads, self.layout.head_dim,
                               self.source)
        return [(a[..., :rank].contiguous(), b[..., :rank].contiguous()) for a, b in maps]

    def warn_past_calibration(self, context: int) -> None:
        """Warn (once per file and context) when projected labels serve positions past their calibration
        windows: fitted on post-RoPE moments, they choose worse there."""
        length = self.calibration_length
        if length is None or context <= length or (self.source, length, context) in _WARNED:
            return
        _WARNED.add((self.source, length, context))
        warnings.warn(f"{self.source}: projected labels calibrated on windows of {length} tokens serve a context of "
                      f"{context}; past their calibration length they choose worse (calibrate with --seqlen {context})",
                      stacklevel=3)


_WARNED: set[tuple[str, int, int]] = set()


def _fingerprint(config, layers: int) -> dict:
    layout = HeadLayout.of(config)
    return {"model_type": getattr(config, "model_type", None), "num_layers": layers, "num_heads": layout.num_heads,
            "num_kv_heads": layout.num_kv_heads, "head_dim": layout.head_dim}


def write_channel_file(path: str | Path, mode: str, config, rows: list[torch.Tensor], kv_rows: list[torch.Tensor],
                       windows: int, tokens: int, projection: list | None = None,
                       prior: list[torch.Tensor] | None = None, force: bool = False,
                       staging: Staging | None = None) -> Path:
    """Write the file and, with `projection` (per layer (A, B)), the projected labels' maps beside it, named
    in the extra key; `prior` (per layer (kv heads, buckets)): the position prior. Both are written under
    temporary names and renamed together when done, or, given a job's `staging`, when the job is."""
    from compress.attention.calibration.prior import BUCKETS, EXACT
    from compress.attention.calibration.projection import METHOD, projection_path, write_projection

    data: dict = {layer_key(i, mode): r.tolist() for i, r in enumerate(rows)}
    data[EXTRA] = {**mark({}), "format": FORMAT, "mode": mode, "model": _fingerprint(config, len(rows)),
                   "kv_heads": {layer_key(i, mode): r.tolist() for i, r in enumerate(kv_rows)},
                   "windows": windows, "tokens": tokens}
    if prior is not None:
        data[EXTRA]["position_prior"] = {"buckets": BUCKETS, "exact": EXACT, "layers": {
            layer_key(i, mode): p.tolist() for i, p in enumerate(prior)}}
    path = Path(path)
    with staged(staging) as files:
        if projection is not None:
            target = projection_path(path)
            maps = write_projection(files.file(target, force), projection)
            data[EXTRA]["projection"] = {"file": target.name, "method": METHOD, "sha256": _digest(maps)}
        files.file(path, force).write_text(json.dumps(data))
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_output_file(out: str | Path, force: bool, projection: bool = False) -> Path:
    """Refuse an output that exists unless `force` and it is a channel file this tool wrote (its marker), or
    whose folder takes no new entries; `projection`: the same for the projection file beside it."""
    from compress.attention.calibration.projection import projection_path

    path = user_path(out).absolute()
    if path.is_symlink() or path.is_dir():
        raise BadInput(f"{out} is a directory or a symbolic link", key="out")
    check_writable(path, out)
    for target, what in [(path, "channel"), *([(projection_path(path), "projection")] if projection else [])]:
        if target.exists() or target.is_symlink():
            if not force:
                raise BadInput(f"{target} already exists (--force replaces a {what} file compress wrote)", key="out")
            refuse_unless_ours(target, target, f"a {what} file")
    return path


def _permutation_rows(value, key: str, rows: int, head_dim: int, source: str) -> torch.Tensor:
    try:
        tensor = torch.tensor(value, dtype=torch.long)
    except (TypeError, ValueError) as exc:
        raise BadInput(f"{source}: {key} is not a list of integer rows") from exc
    if tensor.dim() != 2 or tensor.shape != (rows, head_dim):
        raise BadInput(f"{source}: {key} has shape {tuple(tensor.shape)}, this model needs ({rows}, {head_dim}) "
                       "(a channel file from another model?)")
    if not torch.equal(tensor.sort(dim=-1).values, torch.arange(head_dim).expand(rows, head_dim)):
        raise BadInput(f"{source}: {key} rows are not permutations of range({head_dim})")
    return tensor


def read_channel_file(path: str | Path, config, num_layers: int, mode: str | None = None) -> ChannelFile:
    """Read and check a channel file against a model (its config and decoder layer count). A plain
    reference/SGLang file (no extra key) is accepted when its shapes fit; having no statistics, its
    per-KV-head selection is the row of the first query head of each group."""
    source = str(path)
    p = user_path(path)
    if not p.is_file():
        raise BadInput(f"{source}: no such channel file")
    try:
        data = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"{source}: not a JSON channel file") from exc
    if not isinstance(data, dict):
        raise BadInput(f"{source}: not a JSON channel file")
    extra = data.get(EXTRA) if isinstance(data.get(EXTRA), dict) else {}
    found = sorted({k.rsplit(".", 1)[-1][: -len("_proj")] for k in data if k.startswith("model.layers.")})
    mode = mode or extra.get("mode") or (found[0] if len(found) == 1 else None)
    if mode not in MODES:
        raise BadInput(f"{source}: cannot tell the channel mode (found {found or 'no layer keys'}; give qk, q or k)")
    layout = HeadLayout.of(config)
    expected = _fingerprint(config, num_layers)
    recorded = extra.get("model")
    if recorded:
        differ = [k for k in expected if k != "model_type" and recorded.get(k) != expected[k]]
        if differ:
            raise BadInput(f"{source}: written for another model ({', '.join(f'{k} {recorded.get(k)} vs {expected[k]}' for k in differ)})")
    heads = layout.num_kv_heads if mode == "k" else layout.num_heads
    rows, kv_rows = [], []
    kv_table = extra.get("kv_heads") or {}
    for i in range(num_layers):
        key = layer_key(i, mode)
        if key not in data:
            raise BadInput(f"{source}: no {key} (a channel file from another model, or another mode?)")
        rows.append(_permutation_rows(data[key], key, heads, layout.head_dim, source))
        if key in kv_table:
            kv_rows.append(_permutation_rows(kv_table[key], f"{EXTRA}.kv_heads.{key}", layout.num_kv_heads,
                                             layout.head_dim, source))
        elif mode == "k":
            kv_rows.append(rows[-1])
        else:
            kv_rows.append(rows[-1][:: layout.num_heads // layout.num_kv_heads])
    if len([k for k in data if k.startswith("model.layers.") and k.endswith(f".{mode}_proj")]) != num_layers:
        raise BadInput(f"{source}: holds a different number of layers than this model's {num_layers}")
    named = (extra.get("projection") or {}).get("file") if isinstance(extra.get("projection"), dict) else None
    if named is not None and (not isinstance(named, str) or Path(named).name != named):
        raise BadInput(f"{source}: {EXTRA}.projection.file must name a file beside the channel file")
    projection = p.absolute().parent / named if named else None
    digest = extra["projection"].get("sha256") if named else None
    windows, tokens = extra.get("windows"), extra.get("tokens")
    length = tokens // windows if isinstance(windows, int) and isinstance(tokens, int) and windows > 0 else None
    return ChannelFile(mode, layout, str(expected["model_type"]), rows, kv_rows, projection,
                       _prior(extra.get("position_prior"), mode, num_layers, layout.num_kv_heads, source), source,
                       digest if isinstance(digest, str) else None, length)


def _prior(value, mode: str, num_layers: int, kv_heads: int, source: str) -> list[torch.Tensor] | None:
    from compress.attention.calibration.prior import BUCKETS, EXACT

    if value is None:
        return None
    if not isinstance(value, dict) or value.get("buckets") != BUCKETS or value.get("exact") != EXACT:
        raise BadInput(f"{source}: {EXTRA}.position_prior is not in this version's buckets ({BUCKETS}, exact {EXACT})")
    rows = []
    for i in range(num_layers):
        try:
            row = torch.tensor(value["layers"][layer_key(i, mode)], dtype=torch.float32)
        except (KeyError, TypeError, ValueError) as exc:
            raise BadInput(f"{source}: {EXTRA}.position_prior has no valid row for layer {i}") from exc
        if row.shape != (kv_heads, BUCKETS):
            raise BadInput(f"{source}: {EXTRA}.position_prior layer {i} has shape {tuple(row.shape)}, this model "
                           f"needs ({kv_heads}, {BUCKETS})")
        if not bool(torch.isfinite(row).all()):
            raise BadInput(f"{source}: {EXTRA}.position_prior layer {i} holds values that are not finite")
        rows.append(row)
    return rows
