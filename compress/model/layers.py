"""Finding the decoder layers of a model and the Linears inside them, for any decoder family."""
from __future__ import annotations

import re

from compress.errors import BadInput

__all__ = ["decoder_layers", "target_linears", "compile_regex"]


def decoder_layers(model) -> list[tuple[str, object]]:
    """The repeated decoder blocks, in order, found from `_no_split_modules` or the longest ModuleList."""
    from torch import nn

    block_classes = set(getattr(model, "_no_split_modules", None) or [])
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and type(module[0]).__name__ in block_classes:
            return [(f"{name}.{i}", layer) for i, layer in enumerate(module)]
    lists = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) > 1 and len({type(x) for x in m}) == 1]
    if not lists:
        raise BadInput(f"no decoder layers found in {type(model).__name__}")
    name, module = max(lists, key=lambda item: len(item[1]))
    return [(f"{name}.{i}", layer) for i, layer in enumerate(module)]


def target_linears(layer, layer_name: str, targets: str | None = None, ignore: str | None = None):
    """{full name: Linear} inside one decoder layer, filtered by regexes searched in the full name."""
    from torch import nn

    found = {}
    for name, module in layer.named_modules():
        full = f"{layer_name}.{name}" if name else layer_name
        if not isinstance(module, nn.Linear):
            continue
        if targets and not re.search(targets, full):
            continue
        if ignore and re.search(ignore, full):
            continue
        found[full] = module
    return found


def compile_regex(pattern: str | None, option: str) -> str | None:
    if pattern is None:
        return None
    try:
        re.compile(pattern)
    except re.error as exc:
        raise BadInput(f"{option}: bad regular expression {pattern!r} ({exc})") from exc
    return pattern

