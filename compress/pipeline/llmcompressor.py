"""Reading llm-compressor recipes: their SparseGPTModifier / WandaPruningModifier become our prune stages.
Any other modifier or key is refused by name. Three shapes:

- staged, as their examples write it and as their Recipe.yaml() saves it into an output's recipe.yaml
  (every field of the modifier; `<stage>_stage_<N>` when a recipe was appended to a saved one; older
  versions saved run_type as a python/object/apply tag that compress.pipeline.yaml_lines reads safely):

      sparsity_stage:
        run_type: oneshot
        sparsity_modifiers:
          SparseGPTModifier: {sparsity: 0.5, mask_structure: "2:4", targets: ["Linear"], ignore: ["re:.*lm_head"]}

- a flat list of modifiers, the list `oneshot(recipe=[...])` takes (their default stage):

      - SparseGPTModifier: {sparsity: 0.5, mask_structure: "2:4"}

- the modifiers without a stage: `SparseGPTModifier: {...}` or `<group>_modifiers: {SparseGPTModifier: {...}}`
  at the top, which older versions read as their default stage.
"""
from __future__ import annotations

import re

from compress.errors import BadInput
from compress.pipeline.yaml_lines import path_text

__all__ = ["is_llmcompressor", "translate"]

_METHODS = {"SparseGPTModifier": "sparsegpt", "WandaPruningModifier": "wanda"}
_RENAMED = {"dampening_frac": "damp", "block_size": "blocksize"}
_WHOLE_MODEL = {"Linear", "__ALL__", "__ALL_PRUNABLE__"}
_STAGE = re.compile(r".+_stage(_\d+)?")


def _is_none(value) -> bool:
    return value is None


# Keys llm-compressor writes into a saved recipe.yaml (all of a modifier's fields) that change nothing here,
# with the values accepted: its lifecycle bookkeeping, what it does by default, and where it keeps state.
_NEUTRAL = {
    "sequential_update": lambda v: isinstance(v, bool),  # deprecated there, always sequential (as here)
    "requires_calibration_data": lambda v: v is True,
    "preserve_sparsity_mask": lambda v: v is False,
    "offload_hessians": lambda v: isinstance(v, bool),  # where SparseGPT keeps its Hessians
    "quantize": lambda v: v is False,  # older SparseGPTModifier
    "index": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
    "group": lambda v: v is None or isinstance(v, str),
    "start": _is_none, "end": _is_none, "update": _is_none,
    "sparsity_profile": _is_none, "owl_m": _is_none, "owl_lmbda": _is_none,
}


def _is_state(key: str, value) -> bool:
    """Older versions saved the modifier's runtime state too (initialized_, prunen_, …), unset in a recipe."""
    return key.endswith("_") and value in (None, False)


def is_llmcompressor(data) -> bool:
    if isinstance(data, list):
        return any(isinstance(item, dict) and any(isinstance(k, str) and k.endswith("Modifier") for k in item)
                   for item in data)
    return isinstance(data, dict) and bool(data) and all(
        isinstance(k, str) and (_STAGE.fullmatch(k) or k.endswith(("_modifiers", "Modifier"))) for k in data)


def translate(data, lines: dict, where: str) -> tuple[dict, dict]:
    """Our recipe (calibrate defaults + one prune stage per modifier), and the line of each key in it."""
    stages, new_lines = [], {}

    def fail(path: tuple, message: str):
        line = lines.get(path)
        where_line = f"{where}:{line}" if line else where
        raise BadInput(f"{where_line}: {path_text(path)}: {message}")

    for path, modifier, settings in _modifiers(data, fail):
        if modifier not in _METHODS:
            fail(path, f"modifier {modifier} is not supported (supported: {', '.join(_METHODS)})")
        prune = _prune_settings(modifier, {} if settings is None else settings, path, fail)
        new_path = ("stages", len(stages), "prune")
        for our_key in prune:
            new_lines[new_path + (our_key,)] = lines.get(path + (prune.source[our_key],), lines.get(path))
        new_lines[new_path] = lines.get(path)
        stages.append({"prune": dict(prune)})
    if not stages:
        raise BadInput(f"{where}: no SparseGPTModifier or WandaPruningModifier in this llm-compressor recipe")
    new_lines[("stages",)] = lines.get((0,) if isinstance(data, list) else (next(iter(data)),))
    return {"calibrate": {}, "stages": stages}, new_lines


def _modifiers(data, fail):
    """(path, modifier name, settings) of every modifier, in order, whichever shape holds them."""
    if isinstance(data, list):
        for index, item in enumerate(data):
            if not isinstance(item, dict) or len(item) != 1:
                fail((index,), "each item is one modifier, e.g. '- SparseGPTModifier: {sparsity: 0.5}'")
            (modifier, settings), = item.items()
            yield (index, modifier), modifier, settings
        return
    for key, value in data.items():
        if key.endswith("Modifier"):
            yield (key,), key, value
        elif key.endswith("_modifiers"):
            yield from _group((key,), value, fail)
        else:
            if not isinstance(value, dict):
                fail((key,), "a stage is a mapping of run_type and *_modifiers")
            for stage_key, stage_value in value.items():
                if stage_key == "run_type":
                    if stage_value != "oneshot":
                        fail((key, stage_key), f"run_type {stage_value!r} is not supported (only oneshot)")
                elif isinstance(stage_key, str) and stage_key.endswith("_modifiers"):
                    yield from _group((key, stage_key), stage_value, fail)
                else:
                    fail((key, stage_key), "unknown stage key (expected run_type and *_modifiers)")


def _group(path: tuple, group, fail):
    if not isinstance(group, dict):
        fail(path, "a modifier group is a mapping of modifier names to their settings")
    for modifier, settings in group.items():
        yield path + (modifier,), modifier, settings


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
        elif (key in _NEUTRAL and _NEUTRAL[key](value)) or _is_state(key, value):
            continue
        elif key == "targets":
            targets = None if value is None else _targets(value, path + (key,), fail)  # None: every Linear
            if targets is not None:
                out["targets"], out.source["targets"] = targets, key
        elif key == "ignore":
            ignore = _ignore(value, path + (key,), fail)
            if ignore:  # their default, [], ignores nothing
                out["ignore"], out.source["ignore"] = ignore, key
        elif key in _NEUTRAL or key.endswith("_"):
            fail(path + (key,), f"{modifier} key {key!r} is supported only as llm-compressor writes it unset, "
                                f"not {value!r}")
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
