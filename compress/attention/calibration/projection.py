"""Projected labels (beyond the paper): score ≈ (q A)·(k B) with A, B (head_dim × r) per KV head, in place of
q·k over r heavy channels. The label cache stores k B (r values per token, quantised as channel labels are);
a query is projected once per step (q A), and the scoring kernels read both as they read heavy channels.

A and B are the best rank-r approximation of the bilinear form q·k under the calibration statistics: with
Sq = E[s sᵀ] (s = the sum of the query heads sharing a KV head, since selection ranks by their summed score)
and Sk the keys' covariance (centred: a constant shift of every key moves each query's scores alike and
leaves the ranking alone), E[(sᵀ(I − A Bᵀ) k)²] = ‖Lqᵀ (I − A Bᵀ) Lk‖² for Cholesky factors Sq = Lq Lqᵀ,
Sk = Lk Lkᵀ; its minimum is the truncated SVD Lqᵀ Lk = U S Vᵀ: A = Lq⁻ᵀ U_r, B = Lk⁻ᵀ V_r S_r. The solutions
are nested (rank r is the first r columns of the full-rank one), so the file stores head_dim columns and a
reader keeps [:, :r], as channel rows are read. At r = head_dim, A Bᵀ = I: the exact logits.

The file: safetensors beside the channel file, named in its extra key (compress.channels), with
  layers.{i}.query  (kv_heads, head_dim, head_dim) float32: A, columns by descending singular value
  layers.{i}.key    (kv_heads, head_dim, head_dim) float32: B
and metadata {"compress": "projection", "format": "1", "method": "whitened-svd"} plus the marker of compress
(compress.export.marker) that lets --force replace it.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from compress.errors import BadInput
from compress.export.marker import mark

__all__ = ["QKMoments", "fit_projection", "fit_layer", "projection_path", "write_projection", "read_projection",
           "METHOD"]

METHOD = "whitened-svd"
_META = mark({"compress": "projection", "format": "1", "method": METHOD})


class QKMoments:
    """Second moments of one layer's post-RoPE queries (summed over each KV head's group) and keys."""

    def __init__(self) -> None:
        self.query = self.key = self.key_sum = None
        self.tokens = 0

    def update(self, query: torch.Tensor, key: torch.Tensor) -> None:
        """query (b, heads, n, d), key (b, kv_heads, n, d)."""
        b, h, n, d = query.shape
        kv = key.shape[1]
        s = query.double().view(b, kv, h // kv, n, d).sum(2)
        k = key.double()
        parts = (torch.einsum("bgnd,bgne->gde", s, s), torch.einsum("bgnd,bgne->gde", k, k), k.sum((0, 2)))
        if self.query is None:
            self.query, self.key, self.key_sum = (p.cpu() for p in parts)
        else:
            self.query += parts[0].cpu()
            self.key += parts[1].cpu()
            self.key_sum += parts[2].cpu()
        self.tokens += b * n


def _cholesky(moment: torch.Tensor) -> torch.Tensor:
    """A lower factor of a (nearly) positive semi-definite matrix, with a small ridge for rank deficiency."""
    ridge = 1e-6 * moment.diagonal(dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)
    eye = torch.eye(moment.shape[-1], dtype=moment.dtype)
    return torch.linalg.cholesky(moment + ridge[..., None, None] * eye)


def fit_projection(query_moment: torch.Tensor, key_covariance: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B), each (..., d, d): the whitened SVD of the module docstring, columns by descending singular value."""
    lq, lk = _cholesky(query_moment.double()), _cholesky(key_covariance.double())
    u, s, vh = torch.linalg.svd(lq.transpose(-1, -2) @ lk)
    a = torch.linalg.solve_triangular(lq.transpose(-1, -2), u, upper=True)
    b = torch.linalg.solve_triangular(lk.transpose(-1, -2), vh.transpose(-1, -2), upper=True) * s[..., None, :]
    return a.float(), b.float()


def fit_layer(moments: QKMoments) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) of one layer, (kv_heads, d, d) each, from its accumulated moments."""
    n = max(moments.tokens, 1)
    mean = moments.key_sum / n
    covariance = moments.key / n - mean[:, :, None] * mean[:, None, :]
    return fit_projection(moments.query / n, covariance)


def projection_path(channel_file: str | Path) -> Path:
    """channels.json -> channels.projection.safetensors, beside it."""
    path = Path(channel_file)
    return path.with_name(f"{path.stem}.projection.safetensors")


def write_projection(path: str | Path, maps: list[tuple[torch.Tensor, torch.Tensor]]) -> Path:
    """Write the projection file to `path` (the caller renames it into place)."""
    from safetensors.torch import save_file

    tensors = {}
    for i, (a, b) in enumerate(maps):
        tensors[f"layers.{i}.query"], tensors[f"layers.{i}.key"] = a.contiguous(), b.contiguous()
    save_file(tensors, str(path), metadata=_META)
    return Path(path)


def is_projection_file(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("compress") == "projection"
    except Exception:  # not a safetensors file at all
        return False


def read_projection(path: Path, num_layers: int, kv_heads: int, head_dim: int, source: str
                    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (A, B), each (kv_heads, head_dim, head_dim); a missing or mismatched file is refused."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise BadInput(f"{source}: its projection file {path} is missing")
    if not is_projection_file(path):
        raise BadInput(f"{source}: {path} is not a projection file compress wrote")
    tensors = load_file(str(path))
    names = [re.fullmatch(r"layers\.(\d+)\.(query|key)", name) for name in tensors]
    if not all(names):
        raise BadInput(f"{source}: {path} holds tensors other than layers.N.query / layers.N.key")
    maps = []
    for i in range(num_layers):
        pair = tuple(tensors.get(f"layers.{i}.{part}") for part in ("query", "key"))
        for part, t in zip(("query", "key"), pair):
            if t is None or tuple(t.shape) != (kv_heads, head_dim, head_dim):
                shape = None if t is None else tuple(t.shape)
                raise BadInput(f"{source}: projection layers.{i}.{part} has shape {shape}, this model needs "
                               f"({kv_heads}, {head_dim}, {head_dim}) (a projection from another model?)")
            if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
                raise BadInput(f"{source}: projection layers.{i}.{part} is not finite floating-point values")
        maps.append((pair[0].float(), pair[1].float()))
    if len({name.group(1) for name in names}) != num_layers:
        raise BadInput(f"{source}: the projection holds a different number of layers than this model's {num_layers}")
    return maps
