"""Recipe files: read (a path or `-` for standard input), llm-compressor recipes translated, `--set`
overrides applied, then validated, every error pointing at the file, the line and the key. A top-level
`kind: graph` makes a graph recipe (compress/pipeline/graph_session.py); without it, a language-model recipe."""
from __future__ import annotations

import sys
from pathlib import Path

from compress.errors import BadInput
from compress.pipeline.llmcompressor import is_llmcompressor, translate
from compress.pipeline.recipe import Recipe, validate_config, validate_recipe
from compress.pipeline.yaml_lines import parse_scalar, read_yaml

__all__ = ["read_recipe", "recipe_from_data", "apply_override", "recipe_class"]


def read_recipe(source: str, sets: list[str] = (), model: str | None = None, out: str | None = None):
    """A validated recipe (a Recipe, or a GraphRecipe for `kind: graph`) from a YAML file (or `-`: standard
    input), with the MODEL/--out arguments and `--set key=value` overrides applied on top."""
    where = "<stdin>" if source == "-" else source
    if source == "-":
        text = sys.stdin.read()
    else:
        path = Path(source)
        if not path.is_file():
            raise BadInput(f"{source}: no such recipe file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise BadInput(f"{source}: cannot read the recipe ({type(exc).__name__})") from None
    data, lines = read_yaml(text, where)
    if is_llmcompressor(data):
        data, lines = translate(data, lines, where)
    return recipe_from_data(data, lines, where, sets, model, out)


def recipe_class(data: dict, where: str = "recipe", lines: dict | None = None) -> type:
    """The recipe model a recipe's top-level `kind` names: absent, a language-model Recipe; graph, a GraphRecipe."""
    kind = data.get("kind")
    if kind is None:
        return Recipe
    if kind == "graph":
        from compress.pipeline.graph_session import GraphRecipe

        return GraphRecipe
    line = (lines or {}).get(("kind",))
    raise BadInput(f"{where}{f':{line}' if isinstance(line, int) else ''}: kind: unknown recipe kind {kind!r} "
                   "(graph, or no kind for a language-model recipe)")


def recipe_from_data(data, lines: dict, where: str, sets=(), model=None, out=None):
    if not isinstance(data, dict):
        raise BadInput(f"{where}:1: a recipe is a mapping of model, calibrate, stages and out")
    recipe_type = recipe_class(data, where, lines)
    if model is not None:
        data["model"], lines[("model",)] = model, "the MODEL argument"
    if out is not None:
        data["out"], lines[("out",)] = out, "--out"
    for assignment in sets:
        apply_override(data, lines, assignment, recipe_type)

    def locate(path: tuple) -> str:
        for end in range(len(path), -1, -1):
            found = lines.get(tuple(path[:end]))
            if found is not None:
                return f"{where}:{found}: " if isinstance(found, int) else f"{found}: "
        return f"{where}: "

    return validate_recipe(data, locate) if recipe_type is Recipe else validate_config(recipe_type, data, locate)


def _stage_index(stages: list, name: str) -> int | None:
    kinds = [next(iter(item)) if isinstance(item, dict) and len(item) == 1 else None for item in stages]
    for index, (item, kind) in enumerate(zip(stages, kinds)):
        settings = item.get(kind) if kind else None
        given = settings.get("name") if isinstance(settings, dict) else None
        if given == name or (given is None and kind == name and kinds.count(kind) == 1):
            return index
        if given is None and kind is not None and f"{kind}{index}" == name:
            return index
    return None


def apply_override(data: dict, lines: dict, assignment: str, recipe_type: type = Recipe) -> None:
    """`key=value`: a top-level key (model, out, dtype, …), `calibrate.KEY`, `STAGE.KEY` (a stage's name
    or its kind when unique) or `stages.INDEX.KEY`; the value reads as a YAML scalar. `recipe_type` (the
    recipe's model) tells its top-level keys from stage names."""
    key, sep, text = assignment.partition("=")
    parts = [p for p in key.strip().split(".")]
    if not sep or not all(parts):
        raise BadInput(f"--set {assignment!r}: expected KEY=VALUE, e.g. prune.pattern=6:8")
    value = parse_scalar(text)
    stages = data.get("stages") if isinstance(data.get("stages"), list) else []
    head, rest = parts[0], parts[1:]
    if head == "stages" and rest and rest[0].isdigit():
        index, rest = int(rest[0]), rest[1:]
        if index >= len(stages):
            raise BadInput(f"--set {key}: the recipe has {len(stages)} stages")
    elif rest and head not in recipe_type.model_fields:
        index = _stage_index(stages, head)
        if index is None:
            raise BadInput(f"--set {key}: no stage or key {head!r} in the recipe")
    else:
        index = None
    if index is None:
        target, path, keys = data, (), parts
    else:
        if not rest:
            raise BadInput(f"--set {key}: name a setting of the stage, e.g. {head}.pattern=6:8")
        item = stages[index]
        kind = next(iter(item)) if isinstance(item, dict) and len(item) == 1 else None
        if kind is None:
            raise BadInput(f"--set {key}: stage {index} is not a {{kind: settings}} mapping")
        if item[kind] is None:
            item[kind] = {}
        target, path, keys = item[kind], ("stages", index, kind), rest
    for part in keys[:-1]:
        target = target.setdefault(part, {}) if isinstance(target, dict) else None
        path += (part,)
        if not isinstance(target, dict):
            raise BadInput(f"--set {key}: {'.'.join(map(str, path))} is not a mapping")
    if not isinstance(target, dict):
        raise BadInput(f"--set {key}: {'.'.join(map(str, path))} is not a mapping")
    target[keys[-1]] = value
    lines[path + (keys[-1],)] = f"--set {assignment}"
