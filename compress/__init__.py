"""compress: post-training compression for Hugging Face causal LMs."""
from compress.version import __version__

__all__ = ["__version__", "load"]


def load(path, dtype=None, trust_remote_code: bool = False):
    """Load a compressed export (`compress prune --export compressed`: SparseLinear modules) or a factorized
    checkpoint of a family without a stock MoE (`compress factorize --out` on Gemma: FactorizedMLP modules)."""
    from pathlib import Path

    from compress.factorize.checkpoint import TENSORS, load_factorized

    if (Path(path) / TENSORS).is_file():
        return load_factorized(path, dtype, trust_remote_code)
    from compress.export.compressed import load as load_compressed

    return load_compressed(path, dtype, trust_remote_code)
