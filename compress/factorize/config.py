"""The typed settings of one factorize pass."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from compress.config import StrictConfig, count, seed as seed_field

__all__ = ["FactorizeConfig", "ACTIVE_GROUPS", "DEFAULT_ACTIVE", "translate_active"]

ACTIVE_GROUPS = 16  # --active cuts the FFN into this many equal neuron groups (shared + routed)
DEFAULT_ACTIVE = 0.5
_EXPLICIT = ("experts", "top_k", "shared")


def translate_active(active: float) -> dict:
    """experts (routed E), top_k and shared S such that (S + k) / (S + E) = active, over ACTIVE_GROUPS
    groups: half the active groups shared (always run), half routed (k of E); every group at 100%."""
    groups = active * ACTIVE_GROUPS
    if not 0 < active <= 1 or abs(groups - round(groups)) > 1e-9:
        raise ValueError(f"active {active} is not a multiple of 1/{ACTIVE_GROUPS} in (0, 1] (e.g. 0.25, 0.5, 0.75)")
    running = round(groups)
    if running == ACTIVE_GROUPS:
        return {"experts": ACTIVE_GROUPS, "top_k": ACTIVE_GROUPS, "shared": 0}
    shared = running // 2
    return {"experts": ACTIVE_GROUPS - shared, "top_k": running - shared, "shared": shared}


class FactorizeConfig(StrictConfig):
    active: float | None = None
    """Share of the FFN's neurons each token runs (0.25, 0.5, 0.75, ...): sets experts, top_k and shared
    (translate_active). Without it and without explicit experts/top_k/shared: DEFAULT_ACTIVE."""
    experts: int = count(4)
    """E: routed experts per FFN (FactorLLM's 4 in 1R4E1K); a power of two keeps the k = E case exact."""
    top_k: int = count(1)
    """k: routed experts each token runs (top-k of the router's softmax, renormalised)."""
    shared: int = count(0, minimum=0)
    """S: shared neuron groups (each as wide as an expert) that every token runs: the neurons with the
    highest activation rates on the calibration tokens (CMoE's shared experts)."""
    router: Literal["analytic", "par"] = "analytic"
    """analytic: a linear router in closed form from calibration statistics (compress/factorize/analytic.py);
    par: fitted to PAR pseudo-labels by `steps` Adam steps (FactorLLM)."""
    balance: bool = True
    """analytic router: fold per-expert offsets into the router so each expert gets its fair share of the
    calibration tokens' picks."""
    refit: bool | None = None
    """Refit the down projections in closed form to the dense FFN's outputs given the routing (refit.py);
    default on with the analytic router (measured best: 3.55x instead of 29.3x dense at 25% active on the
    default model), off with PAR."""
    refit_ridge: float = Field(1e-2, gt=0.0, le=1e6)
    """Ridge of the refit, relative to the mean diagonal of the features' Gram matrix."""
    activity_top: int = count(150)
    """Neurons marked active per calibration token (CMoE's K_a) for the shared choice and the carve split."""
    granularity: int = count(1)
    """G: fine-grained experts, each expert cut into G (G·E experts, top G·k)."""
    split: Literal["carve", "contiguous", "random", "cluster", "coactivation"] = "carve"
    """How neurons are grouped into experts (compress/factorize/split.py)."""
    scale: Literal["top-k", "experts"] = "top-k"
    """Factor folded into each expert's down projection: top-k (k, so k equally weighted experts add up
    their neurons as the dense FFN does) or experts (E, FactorLLM's ×E/k). Both reproduce the dense FFN at k = E."""
    train: Literal["router", "router+experts"] = "router"
    """router: stage A, each layer's router fitted to PAR pseudo-labels (expert weights stay slices of the
    dense ones); router+experts: then stage B, experts and routers trained end to end (finetune.py)."""
    steps: int | None = Field(None, ge=0, le=10**9)
    """Adam steps per layer's router (default 200 with the PAR router, 0 with the analytic one; 0 with PAR:
    split only, zero router; with the analytic router: a short fine-tune of it to PAR labels and balance)."""
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

    @model_validator(mode="before")
    @classmethod
    def _from_active(cls, data):
        if not isinstance(data, dict):
            return data
        explicit = {key: data[key] for key in _EXPLICIT if data.get(key) is not None}
        active = data.get("active")
        if active is None and explicit:
            return data
        active = DEFAULT_ACTIVE if active is None else active
        translated = translate_active(float(active))
        clash = {key: value for key, value in explicit.items() if value != translated[key]}
        if clash:
            raise ValueError(f"active {active} means experts {translated['experts']}, top_k {translated['top_k']}, "
                             f"shared {translated['shared']}; give active or {', '.join(clash)}, not both")
        return {**data, **translated, "active": active}

    @field_validator("top_k")
    @classmethod
    def _at_most_experts(cls, value: int, info: ValidationInfo) -> int:
        experts = info.data.get("experts")
        if experts is not None and value > experts:
            raise ValueError(f"top_k {value} exceeds experts {experts}")
        return value

    @property
    def refits(self) -> bool:
        return (self.router == "analytic") if self.refit is None else self.refit

    @property
    def router_steps(self) -> int:
        return (200 if self.router == "par" else 0) if self.steps is None else self.steps

    @property
    def groups(self) -> int:
        """Neuron groups of equal width the FFN is cut into: G·(E + S)."""
        return self.granularity * (self.experts + self.shared)

    @property
    def active_share(self) -> float:
        """Share of the FFN's neurons each token runs: (S + k) / (S + E)."""
        return (self.shared + self.top_k) / (self.shared + self.experts)

    def analytic_routing(self) -> bool:
        """The analytic router is computed (not where every expert runs: routing then changes nothing)."""
        return self.router == "analytic" and self.total_top_k < self.total_experts

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
        return (self.router_steps > 0 or self.split in ("carve", "coactivation") or self.shared > 0
                or (self.refits and self.total_top_k < self.total_experts)
                or self.analytic_routing() or self.train == "router+experts")
