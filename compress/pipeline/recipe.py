"""Recipes: a model (optional), a calibration source, an ordered list of stages and an output.

    model: ./Llama-3-8B          # optional; default SmolLM2-135M-Instruct
    calibrate: {nsamples: 128, seqlen: 2048}
    stages:
      - prune: {method: sparsegpt, pattern: "2:4", permute: heuristic}
      - eval: {context: 1024}
      - export: {format: compressed}
    out: ./llama-2of4

Everything is validated before a model is loaded. A stage is addressed by its `name` (default: its
kind, when that kind occurs once) or by its index: `--set prune.pattern=6:8`, `--set stages.0.damp=0.1`.
"""
from __future__ import annotations

from typing import Annotated, Union

import yaml
from pydantic import Field, ValidationError, model_validator

from compress.calibrate.config import CalibrateConfig
from compress.model.config import LoadConfig
from compress.errors import BadInput
from compress.paths import user_path
from compress.pipeline.gates import Gate
import compress.pipeline.stages  # noqa: F401  (registers the stage kinds)
from compress.pipeline.registry import SESSION_STAGES, STAGES
from compress.pipeline.yaml_lines import path_text

__all__ = ["Recipe", "dump_recipe", "validate_recipe", "validate_config", "stage_item", "flatten_stages"]

_Stage = Annotated[Union[tuple(spec.config for spec in STAGES.values())], Field(discriminator="kind")]


class Recipe(LoadConfig):
    model: str | None = None
    """A local HF directory, a .gguf file or a hub id; default SmolLM2-135M-Instruct."""
    calibrate: CalibrateConfig | None = None
    stages: list[_Stage] = Field(min_length=1)
    out: str | None = None
    """The output directory (needed by an export stage; an export hf is added when out has none)."""
    gates: list[Gate] = Field(default_factory=list)
    """Quality gates, e.g. [ppl_ratio<=1.3]: a breach still writes the outputs, marks it in report.json and
    exits 3 (compress.pipeline.gates; the metric names: compress.pipeline.metrics)."""

    @model_validator(mode="before")
    @classmethod
    def _stage_items(cls, data):
        return flatten_stages(data)

    @model_validator(mode="after")
    def _consistent(self):
        if self.model is not None:
            _check_model_path(self.model)
        if (self.max_memory or self.offload_folder) and self.device_map is None:
            raise BadInput("max_memory and offload_folder go with device_map", key="max_memory")
        names = self.stage_names()
        for index, (name, stage) in enumerate(zip(names, self.stages)):
            if names.count(name) > 1:
                raise BadInput(f"two stages are called {name!r}: give each a distinct name", key=f"stages.{index}")
            if STAGES[stage.kind].needs_calibration(stage) and self.calibrate is None:
                raise BadInput(f"stage {name} needs calibration data: add a calibrate section", key=f"stages.{index}")
        exports = [i for i, s in enumerate(self.stages) if s.kind == "export"]
        if len(exports) > 1 or (exports and exports[0] != len(self.stages) - 1):
            raise BadInput("export must be the last stage, and there can be only one", key=f"stages.{exports[-1]}")
        if exports and self.out is None:
            raise BadInput("the export stage needs an output directory (out)", key="out")
        if self.out is not None and not exports:
            self.stages.append(STAGES["export"].config())
        export = self.stages[-1] if self.out is not None else None
        if export is not None and export.format == "compressed":
            _check_compressible(self.stages, len(self.stages) - 1)
        from compress.pipeline.gates import require_metrics
        from compress.pipeline.metrics import planned_metrics

        require_metrics(self.gates, planned_metrics(self))
        return self

    def stage_names(self) -> list[str]:
        kinds = [s.kind for s in self.stages]
        return [s.name or (s.kind if kinds.count(s.kind) == 1 else f"{s.kind}{i}") for i, s in enumerate(self.stages)]

    def to_dict(self) -> dict:
        data = self.model_dump(mode="json", exclude_none=True)
        data["stages"] = [stage_item(stage) for stage in self.stages]
        if self.gates:
            data["gates"] = [gate.text() for gate in self.gates]
        else:
            data.pop("gates", None)
        return data


def stage_item(stage) -> dict:
    """A stage as a recipe item: {kind: {settings}}."""
    config = stage.model_dump(mode="json", exclude_none=True)
    return {config.pop("kind"): config}


def flatten_stages(data, stages: dict = STAGES):
    """Recipe data with each stage item {kind: {settings}} as its settings and kind, of the kinds in `stages`."""
    if isinstance(data, dict) and isinstance(data.get("stages"), list):
        data = {**data, "stages": [_flatten_item(item, i, stages) for i, item in enumerate(data["stages"])]}
    return data


def _flatten_item(item, index: int, stages: dict):
    if not isinstance(item, dict) or len(item) != 1:
        raise BadInput("each stage is one mapping {kind: {settings}}, e.g. '- prune: {method: wanda}'",
                       key=f"stages.{index}")
    (kind, settings), = item.items()
    if kind not in stages:
        raise BadInput(f"unknown stage {kind!r}: choose one of {', '.join(stages)}", key=f"stages.{index}.{kind}")
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise BadInput(f"the settings of stage {kind} must be a mapping", key=f"stages.{index}.{kind}")
    if "kind" in settings:
        raise BadInput("a stage's kind is its key; remove 'kind'", key=f"stages.{index}.{kind}.kind")
    return {"kind": kind, **settings}


def _check_model_path(model: str) -> None:
    from compress.model.loading import looks_like_hub_id

    path = user_path(model)
    if not path.exists() and not looks_like_hub_id(model):
        raise BadInput(f"{model}: no such file or directory", key="model")


def _check_compressible(stages: list, export_index: int) -> None:
    prunes = [s for s in stages if s.kind == "prune"]
    patterns = {str(s.parsed_pattern) for s in prunes}
    if not prunes or not all(s.parsed_pattern.is_nm for s in prunes) or len(patterns) > 1:
        raise BadInput("the compressed export needs prune stages with one N:M pattern (not unstructured sparsity)",
                       key=f"stages.{export_index}.export.format")


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False, allow_unicode=True)


def validate_recipe(data, locate=None, label=None) -> Recipe:
    """A Recipe from plain data; errors become one BadInput whose key is the dotted path of the culprit.
    `locate(path) -> str` turns a path into a prefix (the file and line) for the message; `label(path)`
    names the culprit (default: its dotted path; the CLI gives its flag)."""
    locate = locate or (lambda path: "")
    if not isinstance(data, dict):
        raise BadInput(f"{locate(())}a recipe is a mapping of model, calibrate, stages, out")
    return validate_config(Recipe, data, locate, label)


def validate_config(model_class, data: dict, locate=None, label=None):
    """Any strict config from plain data, its first error as one BadInput naming the key (or its flag),
    prefixed by `locate(path)` (e.g. the file and line)."""
    locate, label = locate or (lambda path: ""), label or path_text
    try:
        return model_class.model_validate(data)
    except ValidationError as exc:
        path, message = _first_error(exc, model_class)
    except BadInput as exc:
        path, message = _split_key(exc.key), str(exc)
    error = BadInput(f"{locate(path)}{label(path)}: {message}" if path else f"{locate(path)}{message}")
    error.path = path  # already named in the message
    raise error


def _split_key(key: str | None) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in key.split(".")) if key else ()


def _valid_keys(parent: tuple) -> list[str]:
    if len(parent) >= 3 and parent[0] == "stages" and parent[2] in STAGES:
        model = STAGES[parent[2]].config
        for key in parent[3:]:  # a settings block inside a stage (eval's double_sparsity)
            model = _settings_model(model, key) or model
        return [k for k in model.model_fields if k != "kind"]
    if parent == ("calibrate",):
        return list(CalibrateConfig.model_fields)
    return list(Recipe.model_fields)


def _settings_model(model, key):
    """The typed config a field of `model` holds (DoubleSparsity for `double_sparsity`), or None."""
    import typing

    from pydantic import BaseModel

    field = model.model_fields.get(key)
    for candidate in (field.annotation, *typing.get_args(field.annotation)) if field is not None else ():
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _first_error(exc: ValidationError, model_class) -> tuple[tuple, str]:
    error = exc.errors()[0]
    path = tuple(error["loc"])
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, BadInput) and cause.key:
        key = _split_key(cause.key)
        path = key if not path else (path + key[-1:] if path[-1:] != key[-1:] else path)
    message = str(cause) if cause is not None else error["msg"]
    if error["type"] == "extra_forbidden":
        message = f"unknown key (valid: {', '.join(_keys_at(model_class, path[:-1]))})"
    elif error["type"] == "missing":
        message = "missing"
    return path, message.removeprefix("Value error, ")


def _keys_at(model_class, parent: tuple) -> list[str]:
    """The keys the mapping at `parent` may hold: in a language-model recipe (_valid_keys), or in a recipe of
    another session kind (its stage kinds' settings, else its own fields)."""
    session = getattr(model_class, "session", None)
    if session is None:
        return _valid_keys(parent)
    stages = SESSION_STAGES[session]
    if len(parent) == 3 and parent[0] == "stages" and parent[2] in stages:
        return [k for k in stages[parent[2]].config.model_fields if k != "kind"]
    return list(model_class.model_fields)
