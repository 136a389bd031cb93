"""`compress eval --double-sparsity`: perplexity of each model with dense and with Double Sparsity attention."""
from __future__ import annotations

from compress.attention.config import DoubleSparsity

__all__ = ["compare_double_sparsity"]


def compare_double_sparsity(config, settings: DoubleSparsity, progress=None):
    """Perplexity of each model with dense attention and with Double Sparsity (a CompareReport)."""
    from compress.attention.measure import sparse_perplexity
    from compress.calibrate.data import evaluation_tokens, window_bos
    from compress.defaults.assets import EVALUATION_NOVEL
    from compress.errors import BadInput
    from compress.pipeline.compare import CompareReport
    from compress.pipeline.loading import load_placed
    from compress.pipeline.session import Progress, versions

    if config.kernels:
        raise BadInput("--double-sparsity evaluates attention in PyTorch; it does not combine with --kernels",
                       key="kernels")
    progress = progress or Progress()
    source = config.source()
    results = []
    for name in config.models:
        progress.stage(f"evaluating {name or 'the default model'}: dense, then Double Sparsity")
        loaded = load_placed(config, name)
        ids = evaluation_tokens(loaded.tokenizer, source, config.tokens)
        bos_id = window_bos(loaded.tokenizer, config.bos)
        sparse = sparse_perplexity(loaded.model, ids, config.context, loaded.device, settings, bos_id)  # checks first
        dense = sparse_perplexity(loaded.model, ids, config.context, loaded.device, None, bos_id)
        label = (f"{loaded.source} (double sparsity: {settings.channels} channels, {settings.tokens} tokens, "
                 f"{settings.label_bits}-bit labels)")
        results += [{"model": f"{loaded.source} (dense)", **dense}, {"model": label, **sparse}]
        del loaded
    return CompareReport(source=source.describe("austen:" + EVALUATION_NOVEL), results=results, versions=versions())
