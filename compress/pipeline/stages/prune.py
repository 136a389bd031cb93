"""The prune stage: one calibrated, layer-by-layer pruning pass (compress/prune/) over the session's model."""
from __future__ import annotations

from typing import Any, Literal

from compress.pipeline.registry import StageSpec, register
from compress.pipeline.report import ReportModel, StageResult
from compress.prune.config import PruneConfig

__all__ = ["PruneStage", "PruneResultReport"]


class PruneStage(PruneConfig):
    kind: Literal["prune"] = "prune"
    name: str | None = None


class LayerReport(ReportModel):
    index: int
    name: str
    seconds: float
    relative_error: float | None = None
    token_error: float | None = None
    info: dict[str, Any]


class PruneResultReport(StageResult):
    method: str
    pattern: dict[str, Any]
    targets: str
    ignore: str | None
    options: dict[str, Any]
    permute: dict[str, Any]
    seconds: float
    capture_seconds: float
    overall_sparsity: float
    layers: list[LayerReport]
    linears: dict[str, dict[str, Any]]
    permutation_sites: dict[str, str]
    permutation_model_pass: dict[str, Any] | None = None
    peak_gpu_bytes: int | None = None
    peak_gpu_bytes_per_device: list[int] | None = None


def _needs_calibration(config: PruneStage) -> bool:
    from compress.prune import METHODS

    return METHODS[config.method].collector is not None


def _factorize_before(session, config: PruneStage):
    """The factorize stage that runs before this prune stage, if any."""
    stages = session.recipe.stages
    here = next(i for i, stage in enumerate(stages) if stage is config)
    return next((stage for stage in stages[:here] if stage.kind == "factorize"), None)


def _check(session, config: PruneStage) -> None:
    factorize = _factorize_before(session, config)
    if factorize is None:
        from compress.prune.apply import check_config

        check_config(session.model, config)
        return
    from compress.errors import BadInput
    from compress.factorize.apply import check_factorize
    from compress.factorize.prune import check_expert_pruning

    check_expert_pruning(config)
    pattern = config.parsed_pattern
    for _, mlp in check_factorize(session.model, factorize):
        width = mlp.intermediate // factorize.total_experts  # the down projections' input width
        if pattern.is_nm and (width % pattern.m or mlp.gate.in_features % pattern.m):
            raise BadInput(f"pattern {pattern} needs input widths divisible by {pattern.m}: the experts of "
                           f"{mlp.name} have {mlp.gate.in_features} (gate/up) and {width} (down)", key="pattern")


def _permute_report(config: PruneStage) -> dict:
    from compress.permute import SITE_NOTES

    if not config.permuting:
        return {"kind": "none"}
    learn = config.permute_config().learn
    return {"kind": config.permute, "perm_blocks": config.perm_blocks, "sites": SITE_NOTES,
            "learned": learn.to_dict() if config.permute == "learned" else None,
            "global": _global_report(config) if config.permute == "global" else None,
            "stored_in": "permutations.safetensors (one int64 index per Linear: W_pruned[:, perm] is N:M)"}


def _global_report(config: PruneStage) -> dict:
    per_layer = config.permute_config().global_.to_dict() if config.perm_iters else None
    return {"per_layer": per_layer,
            "model_pass": config.model_pass_config().to_dict() if config.perm_model_steps else None}


def _run(session, config: PruneStage) -> PruneResultReport:
    import torch

    from compress.factorize.prune import prune_experts
    from compress.pipeline.resume import layer_checkpoint
    from compress.prune.apply import prune_model

    factorized = _factorize_before(session, config) is not None
    prune = prune_experts if factorized else prune_model  # experts: each with the statistics of its own tokens
    resume = {} if factorized else {"checkpoint": layer_checkpoint(session, config),  # experts: not checkpointed
                                    "on_note": session.progress.stage}
    calibration = session.calibration() if _needs_calibration(config) else None
    gpu = session.device.startswith("cuda")
    if gpu:
        torch.cuda.init()  # the allocator's statistics refuse every device until CUDA is initialised
        for index in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(index)
    result = prune(session.model, config, calibration, session.device, on_layer=session.progress.layer, **resume)
    session.record_pruning(result, config.parsed_pattern)
    summary = result.to_dict()
    report = PruneResultReport(
        method=config.method, pattern=config.parsed_pattern.to_dict(),
        targets="every expert's gate/up and down (routers and the rest stay dense)" if factorized else
        config.targets or "every Linear inside the decoder layers", ignore=config.ignore,
        options=config.options, permute=_permute_report(config), **summary)
    if gpu:
        report.peak_gpu_bytes = torch.cuda.max_memory_allocated()
        if session.placement is not None:
            report.peak_gpu_bytes_per_device = [torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())]
    return report


SPEC = register(StageSpec(
    kind="prune", config=PruneStage, run=_run, check=_check, needs_calibration=_needs_calibration,
    summary="N:M or unstructured pruning, layer by layer (magnitude, wanda, sparsegpt, ria)",
    flags={"method": "--method", "pattern": "--pattern", "sparsity": "--sparsity", "targets": "--targets",
           "ignore": "--ignore", "blocksize": "--blocksize", "damp": "--damp", "ria_alpha": "--ria-alpha", "mask_rule": "--mask-rule",
           "calib_batch": "--calib-batch", "permute": "--permute", "perm_blocks": "--perm-blocks",
           "perm_steps": "--perm-steps", "perm_block_size": "--perm-block-size", "perm_iters": "--perm-iters",
           "perm_tokens": "--perm-tokens", "perm_model_steps": "--perm-model-steps", "perm_windows": "--perm-windows"},
))
