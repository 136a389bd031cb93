"""YAML read with `safe_load` semantics, keeping the line of every key so errors can point at it.

Only plain YAML types are built (mappings, lists, strings, numbers, booleans, null); any other tag
(`!!python/object`, …) is refused, but one: the `run_type` that older llm-compressor versions saved as their
StageRunType enum (`run_type: !!python/object/apply:llmcompressor.recipe.stage.StageRunType [oneshot]`) reads
as the plain string it holds; nothing is imported or called. N:M patterns written without quotes stay
strings (YAML 1.1 would read `2:4` as a base-60 integer).
"""
from __future__ import annotations

import yaml

from compress.errors import BadInput

__all__ = ["Lines", "read_yaml", "parse_scalar", "path_text", "STAGE_RUN_TYPE_TAG"]

Lines = dict  # path tuple -> line number (1-based) or a description such as "--set prune.pattern"

_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "map", "seq")}
_MAX_NODES = 100_000
STAGE_RUN_TYPE_TAG = "tag:yaml.org,2002:python/object/apply:llmcompressor.recipe.stage.StageRunType"
_RUN_TYPES = ("oneshot", "train")  # StageRunType's values


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader and one constructor more, for STAGE_RUN_TYPE_TAG alone."""


def _construct_run_type(loader, node) -> str:
    """The enum's value: PyYAML wrote StageRunType.ONESHOT as the tag applied to [oneshot]."""
    item = node.value[0] if isinstance(node, yaml.SequenceNode) and len(node.value) == 1 else None
    if not (isinstance(item, yaml.ScalarNode) and item.tag == "tag:yaml.org,2002:str" and item.value in _RUN_TYPES):
        raise yaml.constructor.ConstructorError(None, None, f"llm-compressor's StageRunType tag holds one value, "
                                                f"{' or '.join(_RUN_TYPES)}", node.start_mark)
    return item.value


_RecipeLoader.add_constructor(STAGE_RUN_TYPE_TAG, _construct_run_type)


def path_text(path: tuple) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def read_yaml(text: str, where: str) -> tuple[object, Lines]:
    """Parse YAML text into plain Python values and a map of each key's line."""
    try:
        node = yaml.compose(text, Loader=_RecipeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BadInput(f"{where}{line}: YAML syntax error: {problem}") from None
    if node is None:
        raise BadInput(f"{where}: the recipe is empty")
    lines: Lines = {}
    budget = [_MAX_NODES]
    return _build(node, (), lines, where, budget), lines


def _scalar(node: yaml.ScalarNode):
    if node.tag == "tag:yaml.org,2002:int" and ":" in node.value:
        return node.value  # "2:4", not 124
    return yaml.SafeLoader("").construct_object(node, deep=True)


def _build(node, path: tuple, lines: Lines, where: str, budget: list):
    line = node.start_mark.line + 1
    lines.setdefault(path, line)
    budget[0] -= 1
    if budget[0] < 0:
        raise BadInput(f"{where}: the recipe is too large (more than {_MAX_NODES} values)")
    if node.tag == STAGE_RUN_TYPE_TAG and path[-1:] == ("run_type",):
        try:
            return _RecipeLoader("").construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            raise BadInput(f"{where}:{line}: {path_text(path)}: {exc.problem}") from None
    if node.tag not in _PLAIN_TAGS:
        raise BadInput(f"{where}:{line}: {path_text(path) or 'recipe'}: the tag {node.tag} is not allowed "
                       "(recipes are plain YAML)")
    if isinstance(node, yaml.MappingNode):
        out = {}
        for key_node, value_node in node.value:
            key = _build(key_node, path + ("<key>",), {}, where, budget)
            key_line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                raise BadInput(f"{where}:{key_line}: {path_text(path) or 'recipe'}: keys must be names, got {key!r}")
            if key in out:
                raise BadInput(f"{where}:{key_line}: {path_text(path + (key,))}: the key is given twice")
            lines[path + (key,)] = key_line
            out[key] = _build(value_node, path + (key,), lines, where, budget)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, path + (i,), lines, where, budget) for i, item in enumerate(node.value)]
    return _scalar(node)


def parse_scalar(text: str):
    """A `--set` value: YAML scalar semantics (numbers, true/false, null), N:M kept as text; text YAML cannot
    parse (a regex such as `[qk]_proj`) is that text, which the key's own validation then judges."""
    text = text if text.strip() else "''"
    try:
        yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return text
    value, _ = read_yaml(text, "--set")
    return value
