"""Reading llm-compressor recipes: `<name>_stage:` → `<name>_modifiers:` → SparseGPTModifier /
WandaPruningModifier, translated into our prune stages. Any other modifier or key is refused by name.

    sparsity_stage:
      run_type: oneshot
      sparsity_modifiers:
        SparseGPTModifier: {sparsity: 0.5, mask_structure: "2:4", targets: ["Linear"], ignore: ["re:.*lm_head"]}
"""
from __future__ import annotations

import re

from compress.errors import BadInput

__all__ = ["is_llmcompressor", "translate"]

_METHODS = {"SparseGPTModifier": "sparsegpt", "WandaPruningModifier": "wanda"}
_RENAMED = {"dampening_frac": "damp", "block_size": "blocksize"}
_ACCEPTED_NOOPS = {"sequential_update": True}  # our engine is always layer-sequential
_WHOLE_MODEL = {"Linear", "__ALL__", "__ALL_PRUNABLE__"}


def is_llmcompressor(data) -> bool:
    return isinstance(data, dict) and bool(data) and all(
        isinstance(k, str) and k.endswith("_stage") for k in data)


def translate(data: dict, lines: dict, where: str) -> tuple[dict, dict]:
    """Our recipe (calibrate defaults + one prune stage per modifier), and the line of each key in it."""
    stages, new_lines = [], {}

    def fail(path: tuple, message: str):
        line = lines.get(path)
        where_line = f"{where}:{line}" if line else where
        raise BadInput(f"{where_line}: {'.'.join(map(str, path))}: {message}")

    for stage_key, stage in data.items():
        if not isinstance(stage, dict):
            fail((stage_key,), "a stage is a mapping of run_type and *_modifiers")
        for key, value in stage.items():
            if key == "run_type":
                if value != "oneshot":
                    fail((stage_key, key), f"run_type {value!r} is not supported (only oneshot)")
            elif isinstance(key, str) and key.endswith("_modifiers") and isinstance(value, dict):
                for modifier, settings in value.items():
                    path = (stage_key, key, modifier)
                    if modifier not in _METHODS:
                        fail(path, f"modifier {modifier} is not supported (supported: {', '.join(_METHODS)})")
                    prune = _prune_settings(modifier, settings or {}, path, fail)
                    new_path = ("stages", len(stages), "prune")
                    for our_key in prune:
                        new_lines[new_path + (our_key,)] = lines.get(path + (prune.source[our_key],), lines.get(path))
                    new_lines[new_path] = lines.get(path)
                    stages.append({"prune": dict(prune)})
            else:
                fail((stage_key, key), "unknown stage key (expected run_type and *_modifiers)")
    if not stages:
        raise BadInput(f"{where}: no SparseGPTModifier or WandaPruningModifier in this llm-compressor recipe")
    new_lines[("stages",)] = lines.get((next(iter(data)),))
    return {"calibrate": {}, "stages": stages}, new_lines


class _Settings(dict):
    source: dict  # our key -> their key, for line numbers


def _prune_settings(modifier: str, settings: dict, path: tuple, fail) -> _Settings:
    out = _Settings(method=_METHODS[modifier])
    out.source = {"method": None}
    if not isinstance(settings, dict):
        fail(path, "settings must be a mapping")
    structure = settings.get("mask_structure", "0:0")
    sparsity = settings.get("sparsity")
    for key, value in settings.items():
        if key in ("mask_structure", "sparsity"):
            continue
        if key in _RENAMED and (modifier == "SparseGPTModifier"):
            out[_RENAMED[key]], out.source[_RENAMED[key]] = value, key
        elif key in _ACCEPTED_NOOPS and value == _ACCEPTED_NOOPS[key]:
            continue
        elif key == "targets":
            out["targets"], out.source["targets"] = _targets(value, path + (key,), fail), key
            if out["targets"] is None:
                del out["targets"]
        elif key == "ignore":
            out["ignore"], out.source["ignore"] = _ignore(value, path + (key,), fail), key
        else:
            fail(path + (key,), f"{modifier} key {key!r} is not supported")
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(structure))
    if not match:
        fail(path + ("mask_structure",), f"expected N:M such as '2:4' or '0:0', got {structure!r}")
    n, m = int(match.group(1)), int(match.group(2))
    if (n, m) != (0, 0) and not 0 < n < m:
        fail(path + ("mask_structure",), f"{structure!r}: need 0 < N < M (N:M keeps N of every M weights), "
                                         "or '0:0' for unstructured")
    if (n, m) == (0, 0):
        if sparsity is None:
            fail(path, "unstructured pruning needs sparsity")
        out["sparsity"], out.source["sparsity"] = sparsity, "sparsity"
    else:
        if sparsity is not None and not (isinstance(sparsity, (int, float)) and abs(sparsity - (1 - n / m)) < 1e-9):
            fail(path + ("sparsity",), f"sparsity {sparsity} disagrees with mask_structure {n}:{m} "
                                       f"({1 - n / m:g} of the weights are zero)")
        out["pattern"], out.source["pattern"] = f"{n}:{m}", "mask_structure"
    return out


def _names(value, path, fail) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        fail(path, "expected a name or a list of names")
    return items


def _targets(value, path, fail) -> str | None:
    """Class names meaning "every Linear" → our default; `re:` regexes → one regex. A regex that selects
    whole decoder layers (llm-compressor's `re:model.layers.\\d*$`) selects every Linear inside them."""
    regexes = []
    for item in _names(value, path, fail):
        if item in _WHOLE_MODEL or item.endswith("DecoderLayer"):
            return None
        if not item.startswith("re:"):
            fail(path, f"target {item!r} is not supported (a class name Linear or a 're:' regex)")
        regex = _compiled(item[3:], path, fail)
        if re.search(regex, "model.layers.0") and not re.search(regex, "model.layers.0.mlp.up_proj"):
            regex = regex.removesuffix("$") + r"\."
        regexes.append(f"(?:{regex})")
    return "|".join(regexes)


def _ignore(value, path, fail) -> str:
    parts = []
    for item in _names(value, path, fail):
        parts.append(f"(?:{_compiled(item[3:], path, fail)})" if item.startswith("re:")
                     else f"(?:(^|\\.){re.escape(item)}$)")
    return "|".join(parts)


def _compiled(regex: str, path, fail) -> str:
    """The regex of a 're:' item, refused by name when Python's re cannot compile it."""
    try:
        re.compile(regex)
    except re.error as exc:
        fail(path, f"bad regular expression {regex!r} ({exc})")
    return regex
