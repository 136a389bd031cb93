"""Pruning methods. A new method is one file with a `METHOD` and one entry in `METHODS`."""
from compress.prune import magnitude, ria, sparsegpt, wanda
from compress.prune.method import Method
from compress.pattern import Pattern, mask_for, nm_mask, parse_pattern, row_mask

METHODS: dict[str, Method] = {m.name: m for m in (magnitude.METHOD, wanda.METHOD, sparsegpt.METHOD, ria.METHOD)}

__all__ = ["METHODS", "Method", "Pattern", "parse_pattern", "nm_mask", "row_mask", "mask_for"]
