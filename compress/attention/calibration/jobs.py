"""Whole jobs over a model source, for the CLI and scripts: calibrate a channel file."""
from __future__ import annotations

from typing import Callable

from compress.attention.config import ChannelCalibration

__all__ = ["calibrate_channel_file"]


def calibrate_channel_file(config: ChannelCalibration, stage: Callable[[str], None] = lambda message: None,
                           step: Callable[[int, int], None] | None = None) -> dict:
    """Load the model, accumulate the channel statistic over the calibration windows, write the file;
    returns a summary. The output is checked before anything is loaded."""
    from compress.attention.calibration.calibrate import attention_parts, channel_statistics, write_statistics
    from compress.attention.calibration.channels import check_output_file
    from compress.calibrate.data import calibration_tokens
    from compress.model.loading import load_model, resolve_device

    out = check_output_file(config.out, config.force, config.projection)
    device = resolve_device(config.device)
    stage(f"loading {config.model or 'the default model'}")
    model, tokenizer, source = load_model(config.model, config.dtype, device, config.trust_remote_code)
    attention_parts(model)  # refuses models without separate q/k projections before any work
    seqlen = min(config.seqlen, getattr(model.config, "max_position_embeddings", None) or config.seqlen)
    windows = calibration_tokens(tokenizer, config.source(), config.nsamples, seqlen, config.seed, config.bos)
    stage(f"accumulating {config.mode} statistics over {len(windows)} windows of {seqlen} tokens")
    statistics = channel_statistics(model, windows, config.mode, device, step, config.projection)
    layers = write_statistics(out, statistics, config.mode, model.config, config.force)
    return {"out": str(out), "model": source, "mode": config.mode, "layers": layers,
            "windows": statistics.windows, "tokens": statistics.tokens, "projection": config.projection}
