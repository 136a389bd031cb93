"""Learned channel permutations: local search over channel swaps, on the pruned layer's output error.

Starting from a permutation (the heuristic one), two channels in different N:M groups trade places when
that lowers tr(ΔW·H·ΔWᵀ), the output error of the pruned layer on its calibration inputs (H = XᵀX,
ΔW = W ⊙ (1 − mask), the mask chosen by the method's importance in permuted order). A swap only changes
the masks of its two groups, so its effect is cheap to compute exactly from G = ΔW·H.

H loses its top `deflate` eigendirections first. The top one is the input component shared by all tokens;
with it, the search mostly buys cancellation of errors along that one direction (a near-constant shift of
the outputs) at the price of keeping less importance. Lower loss alone has not meant lower perplexity
(BENCHMARKS.md), so prune/apply.py keeps a searched permutation only where the whole decoder layer's
per-token output error falls; so kept, it ends below the heuristic on 15 of 21 measured calibration draws.

One round: the groups are shuffled into windows of `block` channels and every swap inside a window is
scored on a sample of rows; the most promising are then checked on all rows, in batches of swaps on
disjoint groups. The loss is quadratic in ΔW, so a batch's joint effect is exact from its pairwise cross
terms, and swaps are accepted greedily only while the exact loss falls: the result is never worse than
its start.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from compress.pattern import Pattern, mask_for

__all__ = ["LearnConfig", "learned_permutation", "output_loss", "deflated"]


@dataclass(frozen=True)
class LearnConfig:
    steps: int = 8  # search rounds (stops early when a round gains less than `min_gain`)
    block: int = 64  # channels per window: every swap between two groups of a window is a candidate
    sample_rows: int = 256  # rows that score the candidates; accepted swaps are exact on all rows
    tries: int = 4  # candidates checked exactly per round, per group
    batch: int = 64  # swaps on disjoint groups checked together
    min_gain: float = 1e-3  # relative loss drop below which the search stops
    deflate: int = 1  # top eigendirections of H left out of the loss
    seed: int = 0

    def to_dict(self) -> dict:
        return {"search": "channel swaps on the output error", **asdict(self),
                "kept_only_where": "the decoder layer's output error falls (else the heuristic permutation)"}


def deflated(hessian: torch.Tensor, k: int, iters: int = 40, seed: int = 0) -> torch.Tensor:
    """H without its top-k eigendirections (subspace iteration; cheap next to an eigendecomposition)."""
    if k <= 0:
        return hessian
    generator = torch.Generator().manual_seed(seed)
    basis = torch.randn(hessian.shape[0], k, generator=generator).to(hessian)
    for _ in range(iters):
        basis = torch.linalg.qr(hessian @ basis).Q
    top = basis.T @ hessian @ basis
    return hessian - basis @ top @ basis.T


def output_loss(weight: torch.Tensor, pruned: torch.Tensor, hessian: torch.Tensor) -> torch.Tensor:
    """Relative output error of replacing weight by pruned on inputs whose XᵀX is `hessian`."""
    delta = weight - pruned
    return ((delta @ hessian) * delta).sum() / ((weight @ hessian) * weight).sum().clamp_min(1e-30)


def _keep(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """True for the n highest of every m consecutive entries along the last dim (as nm_mask)."""
    groups = score.unflatten(-1, (-1, m))
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(n, dim=-1, sorted=False).indices, True)
    return keep.flatten(-2)


class _Search:
    """Swap search state. Channels are placed by one base permutation of `size` channels per unit, copied at
    `offsets[unit]` (several copies when attention heads that share a KV head share one permutation)."""

    def __init__(self, weight, score, hessian, pattern, base, offsets, config):
        self.w, self.s, self.h = weight, score, hessian
        self.n, self.m, self.config = pattern.n, pattern.m, config
        self.offsets = offsets  # (units, copies)
        self.per_unit = base.shape[1] // self.m
        self.slots = base.reshape(-1, self.m).clone()  # group -> base channels
        self.d = self._pruned_part()
        self.g = self.d @ hessian
        self.loss = float((self.g * self.d).sum())

    def perm(self) -> torch.Tensor:
        base = self.slots.reshape(self.offsets.shape[0], -1)
        size = base.shape[1]
        perm = torch.empty(self.w.shape[1], dtype=torch.long, device=self.w.device)
        perm[(self.offsets[..., None] + torch.arange(size, device=base.device)).reshape(-1)] = \
            (self.offsets[..., None] + base[:, None, :]).reshape(-1)
        return perm

    def _pruned_part(self) -> torch.Tensor:
        perm = self.perm()
        pruned = torch.zeros_like(self.w)
        pruned[:, perm] = self.w[:, perm] * ~_keep(self.s[:, perm], self.n, self.m)
        return pruned

    def columns(self, swaps: torch.Tensor) -> torch.Tensor:
        """Input columns of both groups of each swap (a, pos_a, b, pos_b), in their swapped arrangement:
        (P, copies · 2m), every m consecutive columns one N:M group."""
        ga, pa, gb, pb = swaps.unbind(1)
        pair = torch.cat([self.slots[ga], self.slots[gb]], 1)
        rows = torch.arange(len(swaps), device=pair.device)
        pb = pb + self.m
        pair[rows, pa], pair[rows, pb] = pair[rows, pb], pair[rows, pa]
        unit = ga // self.per_unit
        return (self.offsets[unit][:, :, None] + pair[:, None, :]).flatten(1)

    def effect(self, cols: torch.Tensor, tensors: tuple | None = None):
        """Each swap's exact loss change alone, and its change of ΔW on `cols`: ((P,), (R, P, L)).
        `tensors` = (w, s, d, g) restricted to some rows gives an estimate instead."""
        w, s, d, g = tensors or (self.w, self.s, self.d, self.g)
        keep = _keep(s[:, cols], self.n, self.m)
        change = torch.where(keep, 0.0, w[:, cols]) - d[:, cols]
        local = self.h[cols[:, :, None], cols[:, None, :]]
        quad = (torch.einsum("rpi,pij->rpj", change, local) * change).sum((0, 2))
        return 2 * (change * g[:, cols]).sum((0, 2)) + quad, change

    def candidates(self, generator: torch.Generator) -> torch.Tensor:
        """All swaps between two groups of one window, windows drawn at random inside each unit."""
        units, per, m = self.offsets.shape[0], self.per_unit, self.m
        width = max(2, min(per, self.config.block // m))
        order = torch.argsort(torch.rand(units, per, generator=generator), 1) + torch.arange(units)[:, None] * per
        pad = -order.shape[1] % width
        windows = torch.cat([order, order.new_full((units, pad), -1)], 1).reshape(-1, width)
        i, j = torch.triu_indices(width, width, 1)
        ga, gb = windows[:, i].reshape(-1), windows[:, j].reshape(-1)
        keep = (ga >= 0) & (gb >= 0)
        ga, gb = ga[keep], gb[keep]
        pa, pb = torch.arange(m).repeat_interleave(m), torch.arange(m).repeat(m)
        swaps = torch.stack([ga[:, None].expand(-1, m * m), pa.expand(len(ga), -1),
                             gb[:, None].expand(-1, m * m), pb.expand(len(ga), -1)], 2)
        return swaps.reshape(-1, 4).to(self.w.device)

    def estimate(self, swaps: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        chunk = max(1, (1 << 24) // (len(rows) * 2 * self.m * self.offsets.shape[1]))
        sample = tuple(t[rows] for t in (self.w, self.s, self.d, self.g))
        return torch.cat([self.effect(self.columns(part), sample)[0] for part in swaps.split(chunk)])

    def try_batch(self, swaps: torch.Tensor) -> int:
        """Check swaps on disjoint groups exactly, together; apply those that lower the loss. Returns count."""
        cols = self.columns(swaps)
        alone, change = self.effect(cols)
        flat = change.flatten(1)
        every = cols.reshape(-1)
        # the loss is quadratic in ΔW: two swaps interact only through 2·e_i·H·e_jᵀ
        cross = ((flat.T @ flat) * self.h[every[:, None], every[None, :]]).view(
            len(swaps), cols.shape[1], len(swaps), cols.shape[1]).sum((1, 3))
        alone, cross = alone.double().cpu(), cross.double().cpu()
        chosen, total = [], 0.0
        for i in range(len(swaps)):
            gain = float(alone[i] + 2 * cross[i, chosen].sum())
            if gain < 0:
                chosen.append(i)
                total += gain
        if chosen:
            picked = torch.tensor(chosen, device=cols.device)
            where, delta = cols[picked], change[:, picked]
            ga, pa, gb, pb = swaps[picked].unbind(1)
            self.slots[ga, pa], self.slots[gb, pb] = self.slots[gb, pb], self.slots[ga, pa]
            self.d[:, where.reshape(-1)] += delta.flatten(1)
            self.g += delta.flatten(1) @ self.h[where.reshape(-1)]
            self.loss += total
        return len(chosen)

    def round(self, generator: torch.Generator, rows: torch.Tensor) -> int:
        swaps = self.candidates(generator)
        if not len(swaps):
            return 0
        estimate = self.estimate(swaps, rows)
        order = estimate.argsort()[: self.config.tries * len(self.slots)]
        order = order[estimate[order] < 0]
        queue, accepted = swaps[order].cpu().tolist(), 0
        for _ in range(2):  # a swap that shares a group with a batch waits for a later batch
            used, batch, rest = set(), [], []
            for swap in queue + [None]:
                if swap is not None and (swap[0] in used or swap[2] in used):
                    rest.append(swap)
                    continue
                if swap is not None:
                    used.update((swap[0], swap[2]))
                    batch.append(swap)
                if batch and (swap is None or len(batch) == self.config.batch):
                    accepted += self.try_batch(torch.tensor(batch, device=self.w.device))
                    used, batch = set(), []
            queue = rest
        return accepted


def _layout(block_slots: torch.Tensor | None, block: int | None, device) -> torch.Tensor:
    """offsets[unit, copy]: where each copy of a unit's base permutation starts in the input."""
    if block_slots is None:
        return torch.zeros(1, 1, dtype=torch.long, device=device)
    slots = block_slots.to(device)
    return torch.stack([(slots == u).nonzero()[:, 0] * block for u in range(int(slots.max()) + 1)])


def learned_permutation(
    weight: torch.Tensor,
    score: torch.Tensor,
    hessian: torch.Tensor,
    pattern: Pattern,
    init: torch.Tensor,
    config: LearnConfig = LearnConfig(),
    block_slots: torch.Tensor | None = None,
    block: int | None = None,
) -> tuple[torch.Tensor, dict]:
    """Improve the column permutation `init` of `weight` (rows × in); returns (perm, summary).

    `score` is the method's importance of `weight` in original order; `hessian` is XᵀX of its inputs (the
    loss, and the summary's losses, use it deflated).
    With `block_slots`, the input is made of blocks of `block` channels (attention heads) and block b is
    permuted by the permutation of unit `block_slots[b]`, which `init` must respect (heads sharing a KV head).
    """
    device = weight.device
    weight, score = weight.float(), score.float().to(device)
    hessian = deflated(hessian.float().to(device), config.deflate, seed=config.seed)
    offsets = _layout(block_slots, block, device)
    size = weight.shape[1] if block_slots is None else block
    init = init.to(device)
    base = init[offsets[:, :1] + torch.arange(size, device=device)] - offsets[:, :1]
    search = _Search(weight, score, hessian, pattern, base, offsets, config)
    generator = torch.Generator().manual_seed(config.seed)
    rows = torch.randperm(weight.shape[0], generator=generator)[: config.sample_rows].to(device)
    rounds, swaps = 0, 0
    for rounds in range(1, config.steps + 1):
        before = search.loss
        swaps += search.round(generator, rows)
        if before - search.loss < config.min_gain * before:
            break
    perm = search.perm()

    def loss_of(p):
        pruned = torch.zeros_like(weight)
        pruned[:, p] = weight[:, p] * mask_for(score[:, p], pattern)
        return float(output_loss(weight, pruned, hessian))

    initial, final = loss_of(init), loss_of(perm)
    if final > initial:  # rounding only: every accepted batch lowered the loss
        perm, final = init, initial
    return perm.cpu(), {"initial_loss": initial, "best_loss": final, "rounds": rounds, "swaps": swaps}
