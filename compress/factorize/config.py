"""The typed settings of one factorize pass."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from compress.config import StrictConfig, count, seed as seed_field

__all__ = ["FactorizeConfig"]


class FactorizeConfig(StrictConfig):
    experts: int = count(4)
    """E: experts per FFN (FactorLLM's 4 in 1R4E1K); a power of two keeps the k = E case exact."""
    top_k: int = count(1)
    """k: experts each token runs (top-k of the router's softmax, renormalised)."""
    granularity: int = count(1)
    """G: fine-grained experts, each expert cut into G (G·E experts, top G·k)."""
    split: Literal["contiguous", "random", "cluster", "coactivation"] = "contiguous"
    """How neurons are grouped into experts (compress/factorize/split.py)."""
    scale: Literal["top-k", "experts"] = "top-k"
    """Factor folded into each expert's down projection: top-k (k, so k equally weighted experts add up
    their neurons as the dense FFN does) or experts (E, FactorLLM's ×E/k). Both reproduce the dense FFN at k = E."""
    train: Literal["router", "router+experts"] = "router"
    """router: stage A, each layer's router fitted to PAR pseudo-labels (expert weights stay slices of the
    dense ones); router+experts: then stage B, experts and routers trained end to end (finetune.py)."""
    steps: int = count(200, minimum=0)
    """Adam steps per layer's router (0: split only, zero router)."""
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    """Router learning rate (cosine schedule)."""
    batch_tokens: int = count(1024)
    """Tokens per router step."""
    par_weight: float = Field(0.05, ge=0.0)
    """Weight of the PAR pseudo-label cross-entropy."""
    balance_weight: float = Field(0.01, ge=0.0)
    """Weight of the load-balance term."""
    expert_steps: int = count(100)
    """Stage B (router+experts): Adam steps over batches of calibration windows."""
    expert_lr: float = Field(1e-4, gt=0.0, le=1.0)
    """Stage B learning rate (cosine schedule)."""
    expert_batch: int = count(4)
    """Stage B: calibration windows per step."""
    distill_top: int = count(64)
    """Stage B: the dense model's top-K next-token probabilities kept as the distillation target."""
    distill_weight: float = Field(1.0, ge=0.0)
    """Stage B: weight of the distillation cross-entropy to the dense model."""
    lm_weight: float = Field(0.0, ge=0.0)
    """Stage B: weight of the next-token (language-model) loss on the calibration text."""
    seed: int = seed_field()
    """Seed of random splits, k-means starts and router mini-batches."""
    calib_batch: int = count(0, minimum=0)
    """Calibration windows per forward (0: about 16k tokens)."""

    @field_validator("top_k")
    @classmethod
    def _at_most_experts(cls, value: int, info: ValidationInfo) -> int:
        experts = info.data.get("experts")
        if experts is not None and value > experts:
            raise ValueError(f"top_k {value} exceeds experts {experts}")
        return value

    @property
    def total_experts(self) -> int:
        return self.experts * self.granularity

    @property
    def fold(self) -> int:
        return self.total_top_k if self.scale == "top-k" else self.total_experts

    @property
    def total_top_k(self) -> int:
        return self.top_k * self.granularity

    def needs_calibration(self) -> bool:
        return self.steps > 0 or self.split == "coactivation" or self.train == "router+experts"
