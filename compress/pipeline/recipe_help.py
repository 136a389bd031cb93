"""Every key a recipe may hold, generated from the typed configs and the stage registry (so it cannot go
stale): the top-level keys of each session kind, the calibrate keys and each stage kind's settings, with
their types, defaults and descriptions. `compress run --help` prints it."""
from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Annotated, Literal, Union, get_args, get_origin

from pydantic import BaseModel

__all__ = ["Section", "recipe_reference", "type_text", "default_text"]

# descriptions for fields whose config leaves them undocumented
_NOTES = {
    "name": "Addresses the stage in --set (NAME.KEY=VALUE); default: its kind, when that kind occurs once.",
    "stages": "The stages in order, each a mapping KIND: {KEY: VALUE} (stage kinds below).",
    "calibrate": "Calibration windows (calibrate keys below); needed by stages that calibrate.",
    "trust_remote_code": "Run the model repository's own code (transformers' trust_remote_code).",
    "text_field": "The field of each .jsonl line (or dataset row) that holds the text.",
}


@dataclass
class Section:
    title: str
    rows: list[tuple[str, str]] = field(default_factory=list)  # (KEY: TYPE = DEFAULT, description)


def type_text(annotation) -> str:
    """A field's type as a recipe writer reads it: str, int | null, hf|compressed, list of mapping, …"""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return type_text(args[0])
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if all(isinstance(a, type) and issubclass(a, BaseModel) for a in members):
            text = "mapping"
        else:
            text = " | ".join(dict.fromkeys(type_text(a) for a in members))
        return f"{text} | null" if len(members) < len(args) else text
    if origin is list:
        return f"list of {type_text(args[0])}" if args else "list"
    if origin is dict or annotation is dict or (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
        return "mapping"
    return annotation.__name__ if isinstance(annotation, type) else str(annotation)


def default_text(info) -> str | None:
    """The default as YAML writes it; None when the key is required."""
    if info.is_required():
        return None
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value if value.strip() else repr(value)
    return str(value)


def _rows(config: type, skip: tuple = ()) -> list[tuple[str, str]]:
    rows = []
    for name, info in config.model_fields.items():
        if name in skip:
            continue
        kind, default = type_text(info.annotation), default_text(info)
        if get_origin(info.annotation) is Literal and len(get_args(info.annotation)) == 1:
            term = f"{name}: {kind}"
        else:
            term = f"{name}: {kind}" + (" (required)" if default is None else f" = {default}")
        rows.append((term, " ".join((info.description or _NOTES.get(name, "")).split())))
    return rows


def recipe_reference() -> list[Section]:
    """The sections of the reference: each session kind's top-level keys, then its stage kinds."""
    from compress.calibrate.config import CalibrateConfig
    from compress.pipeline.graph_session import GraphRecipe
    from compress.pipeline.recipe import Recipe
    from compress.pipeline.registry import SESSION_STAGES

    sections = [Section("Recipe keys (a language-model recipe, the default kind)", _rows(Recipe)),
                Section("calibrate keys", _rows(CalibrateConfig))]
    sections += [Section(f"Stage {kind}: {spec.summary}", _rows(spec.config, skip=("kind",)))
                 for kind, spec in SESSION_STAGES["llm"].items()]
    sections.append(Section("Graph recipe keys (kind: graph)", _rows(GraphRecipe)))
    sections += [Section(f"Stage {kind} (graph recipes): {spec.summary}", _rows(spec.config, skip=("kind",)))
                 for kind, spec in SESSION_STAGES["graph"].items()]
    return sections
