"""compress: post-training compression for Hugging Face causal LMs."""
from compress.version import __version__

__all__ = ["__version__", "load"]


def load(path, dtype=None, trust_remote_code: bool = False):
    """Load a compressed export (`compress prune --export compressed`: SparseLinear modules) or a factorized
    checkpoint of a family without a stock MoE (`compress factorize --out` on Gemma: FactorizedMLP modules)."""
    from compress.pipeline.loading import load_export

    return load_export(path, dtype, trust_remote_code)
