"""One PruneConfig builder for the typed config (compress/prune/config.py) and the older dataclass."""
from __future__ import annotations


def prune_config(method: str, pattern: str, calib_batch: int = 0, permute: str = "none", perm_blocks: int = 1,
                 perm_steps: int = 8, perm_block_size: int = 64, perm_deflate: int = 1, perm_seed: int = 0, **newer):
    """`pattern` is N:M ("2:4") or an unstructured fraction ("0.5"); `newer`: fields only the typed config has."""
    from compress.prune.apply import PruneConfig

    nm = ":" in pattern
    if hasattr(PruneConfig, "model_fields"):
        return PruneConfig(method=method, pattern=pattern if nm else None, sparsity=None if nm else float(pattern),
                           calib_batch=calib_batch, permute=permute, perm_blocks=perm_blocks, perm_steps=perm_steps,
                           perm_block_size=perm_block_size, perm_deflate=perm_deflate, perm_seed=perm_seed, **newer)
    from compress.permute import PermuteConfig
    from compress.prune import parse_pattern

    spec = parse_pattern(pattern) if nm else parse_pattern(sparsity=float(pattern))
    return PruneConfig(method, spec, calib_batch=calib_batch,
                       permute=PermuteConfig(permute, perm_blocks, learn_config(perm_steps, perm_block_size,
                                                                               perm_deflate, perm_seed)))


def learn_config(steps: int = 8, block: int = 64, deflate: int = 1, seed: int = 0):
    from compress.permute.learned import LearnConfig

    return LearnConfig(block=block, steps=steps, deflate=deflate, seed=seed)
