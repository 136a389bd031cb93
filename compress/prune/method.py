"""The contract every pruning method fulfils."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from compress.calibrate.collectors import Collector
from compress.pattern import Pattern

PruneFn = Callable[[torch.Tensor, Optional[Collector], Pattern, dict], torch.Tensor]
ScoreFn = Callable[[torch.Tensor, Optional[Collector], dict], torch.Tensor]


@dataclass(frozen=True)
class Method:
    """A pruning method: a pure function from a weight (and its input statistic) to a pruned weight.

    `collector` names the statistic the calibration pass gathers for it (None: no data pass at all).
    `rows_independent` lets the engine stack the rows of Linears that share an input into one call.
    `score` is the per-weight importance that channel permutations try to keep.
    `learn_weights(dense, pruned, stats, options)` (optional, columns in the pruning order) gives the weights the
    permutation model pass learns its masks on, where they are not the dense ones (SparseGPT's updated weights).
    """

    name: str
    collector: str | None
    prune: PruneFn
    score: ScoreFn
    rows_independent: bool = True
    summary: str = ""
    learn_weights: Callable[[torch.Tensor, torch.Tensor, Optional[Collector], dict], torch.Tensor] | None = None
