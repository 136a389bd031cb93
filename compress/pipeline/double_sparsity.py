"""`compress eval --double-sparsity`: perplexity (and zero-shot tasks) of each model with dense and with Double
Sparsity attention."""
from __future__ import annotations

from compress.attention.config import DoubleSparsity

__all__ = ["compare_double_sparsity"]


def compare_double_sparsity(config, settings: DoubleSparsity, progress=None):
    """Perplexity of each model with dense attention and with Double Sparsity (a CompareReport)."""
    from compress.attention.evaluation.measure import sparse_perplexity
    from compress.errors import BadInput
    from compress.pipeline.compare import measure_each_model, zero_shot_of

    if config.kernels:
        raise BadInput("--double-sparsity evaluates attention in PyTorch; it does not combine with --kernels",
                       key="kernels")

    def measure(loaded, ids, bos_id) -> list[dict]:
        sparse = sparse_perplexity(loaded.model, ids, config.context, loaded.device, settings, bos_id)  # checks first
        dense = sparse_perplexity(loaded.model, ids, config.context, loaded.device, None, bos_id)
        extras = (", projected labels" if settings.labels == "projection" else "") + \
            (", position prior" if settings.position_prior else "")
        label = (f"{loaded.source} (double sparsity: {settings.channels} channels, {settings.tokens} tokens, "
                 f"{settings.label_bits}-bit labels{extras})")
        return [{"model": f"{loaded.source} (dense)", **dense, **zero_shot_of(config, loaded)},
                {"model": label, **sparse, **zero_shot_of(config, loaded, settings)}]

    return measure_each_model(config, measure, progress, what=": dense, then Double Sparsity")
