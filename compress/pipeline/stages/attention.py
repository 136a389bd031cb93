"""The `attention` stage: a Double Sparsity channel file ranked on the session's calibration windows
(compress eval --double-sparsity measures one: compress/pipeline/double_sparsity.py)."""
from __future__ import annotations

from typing import Literal

from compress.attention import defaults
from compress.config import StrictConfig
from compress.pipeline.registry import StageSpec, register
from compress.pipeline.report import StageResult

__all__ = ["AttentionStage", "AttentionResult"]


class AttentionStage(StrictConfig):
    """Write a Double Sparsity channel file ranked on the calibration windows; the model is unchanged."""

    kind: Literal["attention"] = "attention"
    name: str | None = None
    channel_file: str
    """The channel file (JSON) to write."""
    mode: Literal["qk", "q", "k"] = "qk"
    projection: bool = defaults.CALIBRATION_PROJECTION
    """Also fit projected labels (compress.attention.calibration.projection), written beside the channel file: the
    default Double Sparsity setting reads them."""
    force: bool = False
    """Replace channel_file if it is a channel file compress wrote."""


class AttentionResult(StageResult):
    channel_file: str
    mode: str
    layers: int
    windows: int
    tokens: int


def _check_outputs(config: AttentionStage) -> None:
    from compress.attention.calibration.channels import check_output_file

    check_output_file(config.channel_file, config.force, config.projection)


def _check(session, config: AttentionStage) -> None:
    from compress.attention.calibration.calibrate import attention_parts

    attention_parts(session.model)


def _run(session, config: AttentionStage) -> AttentionResult:
    from compress.attention.calibration.calibrate import channel_statistics, write_statistics
    from compress.attention.calibration.channels import check_output_file

    out = check_output_file(config.channel_file, config.force, config.projection)
    statistics = channel_statistics(session.model, session.calibration(), config.mode, session.device,
                                    projection=config.projection)
    layers = write_statistics(out, statistics, config.mode, session.model.config, config.force, session.staging)
    return AttentionResult(channel_file=str(out), mode=config.mode, layers=layers, windows=statistics.windows,
                           tokens=statistics.tokens)


SPEC = register(StageSpec(
    kind="attention", config=AttentionStage, run=_run, check=_check, check_outputs=_check_outputs,
    needs_calibration=lambda config: True,
    summary="Double Sparsity channel file from the calibration windows (model unchanged)",
    flags={"channel_file": "--out", "mode": "--mode", "projection": "--projection", "force": "--force"},
))
