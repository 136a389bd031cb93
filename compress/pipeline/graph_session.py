"""A graph session: a recipe with `kind: graph` runs GTSP pruning on a GraphGPS checkpoint of
`compress graph train`, as `compress graph prune` does (both call compress.graph.job.prune_checkpoint).

    kind: graph
    model: ./gps-mutag             # a checkpoint of compress graph train
    data: mutag                    # optional; default: the data the model was trained on
    calibration_graphs: 1024
    stages:
      - graph_prune: {heads: 0.5, tokens: 0.5, weights: 0.5, finetune_epochs: 1}
    out: ./gps-mutag-pruned
"""
from __future__ import annotations

import time
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, model_validator

from compress.config import StrictConfig, count
from compress.errors import BadInput
import compress.pipeline.stages  # noqa: F401  (registers the stage kinds)
from compress.pipeline.recipe import flatten_stages, stage_item
from compress.pipeline.gates import Gate
from compress.pipeline.registry import GRAPH_STAGES
from compress.pipeline.report import ReportModel, StageReport

__all__ = ["GraphRecipe", "GraphReport", "GraphSession", "run_graph_recipe"]

_GraphStage = Annotated[Union[tuple(spec.config for spec in GRAPH_STAGES.values())], Field(discriminator="kind")]


class GraphRecipe(StrictConfig):
    """A graph recipe: a GraphGPS checkpoint, the graphs that calibrate the pruning, one graph_prune stage."""

    session: ClassVar[str] = "graph"  # its stage kinds: registry.SESSION_STAGES["graph"]
    kind: Literal["graph"] = "graph"
    """Picks this session kind; leave it out for a language-model recipe."""
    model: str
    """A checkpoint directory written by compress graph train (or prune)."""
    data: str | None = None
    """mutag | b3db | a TU-format directory | a .csv of smiles,label | a packed .pt; default: the model's own."""
    calibration_graphs: int = count(1024)
    """Training graphs used to score importance and re-estimate the norms."""
    device: str = "auto"
    """auto | cpu | cuda."""
    stages: list[_GraphStage] = Field(min_length=1)
    out: str | None = None
    """Write the pruned checkpoint here (model.safetensors, graph.json, compression.json, report.json)."""
    gates: list[Gate] = Field(default_factory=list)
    """Quality gates on the test split, e.g. [recovery>=0.95, flops_ratio<=0.6]: a breach still writes the
    outputs, marks it in report.json and exits 3."""

    @model_validator(mode="before")
    @classmethod
    def _stage_items(cls, data):
        return flatten_stages(data, GRAPH_STAGES)

    @model_validator(mode="after")
    def _consistent(self):
        from compress.paths import user_path

        if not user_path(self.model).is_dir():
            raise BadInput(f"{self.model}: no such checkpoint directory (make one with compress graph train)",
                           key="model")
        if len(self.stages) > 1:  # each graph_prune loads the checkpoint and writes out: one job, one stage
            raise BadInput("a graph recipe has one graph_prune stage", key="stages.1")
        from compress.pipeline.gates import require_metrics
        from compress.pipeline.metrics import planned_metrics

        require_metrics(self.gates, planned_metrics(self))
        return self

    def stage_names(self) -> list[str]:
        return [stage.name or stage.kind for stage in self.stages]

    def to_dict(self) -> dict:
        data = self.model_dump(mode="json", exclude_none=True)
        data["stages"] = [stage_item(stage) for stage in self.stages]
        if self.gates:
            data["gates"] = [gate.text() for gate in self.gates]
        else:
            data.pop("gates", None)
        return data


class GraphReport(ReportModel):
    kind: Literal["graph"] = "graph"
    model: str
    device: str
    stages: list[StageReport] = Field(default_factory=list)
    recipe: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    seconds_total: float = 0.0
    out: str | None = None

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


class GraphSession:
    """What a graph stage sees: the recipe, progress callbacks and whether --force was given."""

    def __init__(self, recipe: GraphRecipe, progress=None, force: bool = False):
        from compress.pipeline.session import Progress

        self.recipe, self.progress, self.force = recipe, progress or Progress(), force

    def run(self) -> GraphReport:
        from compress.provenance import versions

        started = time.perf_counter()
        recipe = self.recipe
        report = GraphReport(model=recipe.model, device=recipe.device, recipe=recipe.to_dict(), versions=versions())
        for name, config in zip(recipe.stage_names(), recipe.stages):
            spec = GRAPH_STAGES[config.kind]
            self.progress.stage(f"{name}: {spec.summary}")
            stage_started = time.perf_counter()
            result = spec.run(self, config)
            report.stages.append(StageReport(name=name, kind=config.kind, result=result,
                                             seconds=round(time.perf_counter() - stage_started, 3)))
            report.out = getattr(result, "out", None) or report.out
        report.seconds_total = round(time.perf_counter() - started, 3)
        from compress.pipeline.gates import GateBreach, check_gates
        from compress.pipeline.metrics import measured_metrics

        outcomes = check_gates(recipe.gates, measured_metrics(report.to_json()["stages"]))
        if not all(o.passed for o in outcomes):  # the outputs and report.json are written and mark the breach
            raise GateBreach(outcomes, report)
        return report


def run_graph_recipe(recipe: GraphRecipe, progress=None, force: bool = False) -> GraphReport:
    """Run a graph recipe's stage on its checkpoint; the report of `compress run`."""
    return GraphSession(recipe, progress, force).run()
