"""compress: post-training compression for Hugging Face causal LMs."""
from compress.version import __version__

__all__ = ["__version__", "load"]


def load(path, dtype=None, trust_remote_code: bool = False):
    """Load a compressed export (`compress prune --export compressed`) with SparseLinear modules."""
    from compress.export.compressed import load as load_compressed

    return load_compressed(path, dtype, trust_remote_code)
