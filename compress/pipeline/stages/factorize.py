"""The factorize stage: each dense gated FFN of the session's model becomes shared neurons and E·G routed
experts with a router per layer (compress/factorize/: CMoE-style carving and an analytic router by default,
FactorLLM's PAR router as an option) (then, with train router+experts, experts and routers
trained end to end); a later export writes a stock MoE checkpoint."""
from __future__ import annotations

from typing import Literal

from compress.factorize.config import FactorizeConfig
from compress.pipeline.registry import StageSpec, register
from compress.pipeline.report import StageResult
from compress.pipeline.stages.prune import LayerReport

__all__ = ["FactorizeStage", "FactorizeResultReport"]


class FactorizeStage(FactorizeConfig):
    kind: Literal["factorize"] = "factorize"
    name: str | None = None


class FactorizeResultReport(StageResult):
    split: str
    active: float | None
    shared: int
    router: str
    balance: bool
    experts: int
    top_k: int
    granularity: int
    total_experts: int
    total_top_k: int
    scale: str
    train: str
    steps: int
    lr: float
    par_weight: float
    balance_weight: float
    seed: int
    training_tokens: int
    ffn_flops_share: float  # FFN multiply-adds per token relative to dense: (S + k) / (S + E) (the router adds hidden·E·G)
    exports_to: str | None
    seconds: float
    capture_seconds: float
    end_to_end: dict | None  # stage B (router+experts): losses, seconds, tokens
    layers: list[LayerReport]


def _check(session, config: FactorizeStage) -> None:
    from compress.errors import BadInput
    from compress.factorize.apply import check_factorize

    check_factorize(session.model, config)
    kinds = [stage.kind for stage in session.recipe.stages]
    if kinds.count("factorize") > 1:
        raise BadInput("a recipe can factorize once", key="factorize")
    if session.recipe.out is not None:
        from compress.factorize.export import EXPORTS, check_exportable

        export = session.recipe.stages[-1]
        if export.format != "hf":
            raise BadInput("a factorized model exports as a stock MoE checkpoint (or, for a family without one, a "
                           "compress.load checkpoint): use export format hf", key="export.format")
        if getattr(session.model.config, "model_type", None) in EXPORTS:
            check_exportable(session.model.config)


def _export(session, out, manifest: dict, extra_files: dict) -> None:
    from compress.factorize.checkpoint import save_factorized
    from compress.factorize.export import EXPORTS, save_moe

    stock = getattr(session.model.config, "model_type", None) in EXPORTS
    (save_moe if stock else save_factorized)(session.model, session.tokenizer, out, manifest, session.force,
                                             extra_files=extra_files)


def _exports_to(config, shared: bool) -> str | None:
    """What --out would write: the stock MoE type, the compress.load checkpoint, or None (not exportable)."""
    from compress.errors import BadInput
    from compress.factorize.export import EXPORTS, export_target

    if getattr(config, "model_type", None) not in EXPORTS:
        return "compress-factorized (compress.load)"
    try:
        return export_target(config, shared)
    except BadInput:
        return None


def stage_b_line(entry: dict) -> str:
    """One progress line of stage B: step, the loss and its terms, training tokens per second."""
    terms = ", ".join(f"{name} {entry[name]:.4f}" for name in ("distill", "lm", "par", "balance") if name in entry)
    return (f"stage B step {entry['step'] + 1}/{entry['steps']}: loss {entry['loss']:.4f} ({terms}), "
            f"{entry['tokens_per_s']:,.0f} tokens/s")


def _run(session, config: FactorizeStage) -> FactorizeResultReport:
    from compress.factorize.apply import factorize_model

    calibration = session.calibration() if config.needs_calibration() else None
    result = factorize_model(session.model, config, calibration, session.device, on_layer=session.progress.layer,
                             on_step=lambda entry: session.progress.stage(stage_b_line(entry)))
    session.exporter = _export
    summary = result.to_dict()
    return FactorizeResultReport(
        split=config.split, active=config.active, shared=config.shared, router=config.router, balance=config.balance,
        experts=config.experts, top_k=config.top_k, granularity=config.granularity,
        total_experts=config.total_experts, total_top_k=config.total_top_k, scale=config.scale, train=config.train, steps=config.router_steps,
        lr=config.lr, par_weight=config.par_weight, balance_weight=config.balance_weight, seed=config.seed,
        training_tokens=summary.pop("tokens"), ffn_flops_share=config.active_share,
        exports_to=_exports_to(session.model.config, config.shared > 0),
        **summary)


SPEC = register(StageSpec(
    kind="factorize", config=FactorizeStage, run=_run, check=_check,
    needs_calibration=lambda config: config.needs_calibration(),
    summary="Split each FFN into shared neurons and routed experts with a router per layer (CMoE, FactorLLM)",
    flags={"active": "--active", "shared": "--shared", "router": "--router", "balance": "--balance/--no-balance", "refit": "--refit/--no-refit",
           "activity_top": "--activity-top", "experts": "--experts", "top_k": "--top-k", "granularity": "--granularity", "split": "--split",
           "scale": "--scale", "train": "--train", "expert_steps": "--expert-steps", "expert_lr": "--expert-lr",
           "expert_batch": "--expert-batch", "distill_top": "--distill-top", "distill_weight": "--distill-weight",
           "lm_weight": "--lm-weight", "steps": "--steps", "lr": "--lr", "batch_tokens": "--batch-tokens",
           "par_weight": "--par-weight", "balance_weight": "--balance-weight",
           "calib_batch": "--calib-batch"},
))
