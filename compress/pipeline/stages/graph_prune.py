"""The `graph_prune` stage of a graph session (`kind: graph`): GTSP post-training pruning of a GraphGPS
checkpoint, the job `compress graph prune` runs (compress.graph.job.prune_checkpoint, shared by both)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from compress.config import StrictConfig, count, seed
from compress.graph.prune import WEIGHT_METHODS
from compress.pipeline.registry import StageSpec, register
from compress.pipeline.report import StageResult

__all__ = ["GraphPruneStage", "GraphPruneResult", "graph_run_report", "graph_recorder"]


class GraphPruneStage(StrictConfig):
    """GTSP's four dimensions on a trained GraphGPS; each fraction in [0, 1), 0 leaves that dimension alone."""

    kind: Literal["graph_prune"] = "graph_prune"
    name: str | None = None
    tokens: float = 0.0
    """Fraction of each graph's nodes kept out of global attention."""
    heads: float = 0.0
    """Fraction of attention heads removed from every layer."""
    layers: float = 0.0
    """Fraction of layers whose global attention is removed."""
    weights: float = 0.0
    """Unstructured: fraction of each Linear row's weights zeroed."""
    weight_pattern: str | None = None
    """N:M weight sparsity instead of weights (e.g. 2:4)."""
    weight_method: Literal[WEIGHT_METHODS] = "magnitude"
    random: bool = False
    """Choose at random (the baseline) instead of by importance."""
    seed: int = seed(0)
    """Seed of the random choices and the fine-tune."""
    recalibrate: bool = True
    """Re-estimate the BatchNorm statistics on the calibration graphs after pruning."""
    finetune_epochs: int = count(0, minimum=0)
    """Recovery fine-tune epochs (at most 10% of the reference's training epochs)."""
    finetune_lr: float = 3e-4
    """Learning rate of the recovery fine-tune, in (0, 1]."""

    @model_validator(mode="after")
    def _valid_spec(self):
        from compress.config import check_positive

        self.spec().pattern  # the fractions, the method and an N:M pattern are checked where they are used
        check_positive(self.finetune_lr, "finetune_lr", maximum=1.0)
        return self

    def spec(self):
        """The compress.graph.prune.GraphPruneSpec these settings describe."""
        from compress.graph.prune import GraphPruneSpec

        return GraphPruneSpec(tokens=self.tokens, heads=self.heads, layers=self.layers, weights=self.weights,
                              weight_method=self.weight_method, weight_pattern=self.weight_pattern,
                              random=self.random, seed=self.seed, recalibrate=self.recalibrate)


class GraphPruneResult(StageResult):
    checkpoint: str
    spec: dict[str, Any]
    finetune_epochs: int
    heads: list[int]
    token_keep: float
    weight_pattern: str | None
    layers_removed: list[int] | None = None
    heads_removed: dict[str, list[int]] | None = None
    calibration_loss_before: float
    calibration_loss_after: float
    prune_seconds: float
    reference: dict[str, Any]  # test-split metrics and FLOP counts of the checkpoint as loaded
    pruned: dict[str, Any]  # the same of the pruned (and fine-tuned) model
    external: dict[str, Any] | None = None  # B3DB's external set: {reference, pruned}
    out: str | None = None  # the pruned checkpoint, when the recipe has out


def _run(session, config: GraphPruneStage) -> GraphPruneResult:
    from compress.graph.job import prune_checkpoint

    recipe = session.recipe
    job = prune_checkpoint(recipe.model, config.spec(), recipe.data, recipe.calibration_graphs, config.finetune_epochs,
                           config.finetune_lr, out=recipe.out, force=session.force, device=recipe.device,
                           log=session.progress.stage, recipe=recipe.to_dict(),
                           record=graph_recorder(recipe.to_dict(), recipe.gates))
    return GraphPruneResult.model_validate({key: job[key] for key in GraphPruneResult.model_fields if key in job})


SPEC = register(StageSpec(
    kind="graph_prune", config=GraphPruneStage, run=_run, session="graph",
    summary="GTSP: prune a GraphGPS's tokens, heads, attention layers and weights (compress graph prune)",
))


# -- report.json of a graph job: compress.graph.job calls the hook graph_recorder makes, inside the folder it
# builds (the graph room itself knows nothing of reports); the graph data's digest stands for token digests
def graph_run_report(job: dict, checkpoint: str, data_source: str, graphs: list, device: str, started: str,
                     seconds: float, recipe: dict, gates: list = ()):
    """`job`: prune_checkpoint's report; `graphs`: the calibration and test graphs the job used."""
    from compress.pipeline.gates import check_gates
    from compress.pipeline.metrics import measured_metrics
    from compress.pipeline.report import StageReport
    from compress.pipeline.run_report import Inputs, RunReport, file_digest, provenance, tensors_digest
    from compress.provenance import machine, versions

    result = GraphPruneResult.model_validate({key: job[key] for key in GraphPruneResult.model_fields if key in job})
    stage = StageReport(name="graph_prune", kind="graph_prune", seconds=round(seconds, 3), result=result)
    tensors = [t for graph in graphs for t in (graph.x, graph.edge_index, getattr(graph, "edge_attr", None), graph.y)
               if t is not None]
    metrics = measured_metrics([stage.model_dump(mode="json")])
    outcomes = check_gates(list(gates), metrics)
    return RunReport(model=str(checkpoint), dtype="float32", device=device, stages=[stage], recipe=recipe,
                     versions=versions(), seconds_total=round(seconds, 3), out=job.get("out"), kind="graph",
                     inputs=Inputs(model=file_digest(checkpoint), data=tensors_digest(tensors, data_source)),
                     seed=job.get("spec", {}).get("seed"), machine=machine(), provenance=provenance(),
                     started=started, metrics=metrics, gates=outcomes, gates_passed=all(o.passed for o in outcomes))


def graph_recorder(recipe: dict | None = None, gates: list = ()):
    """The `record` hook compress.graph.job.prune_checkpoint calls inside the folder it is building: writes
    report.json there (a recipe file gives its own recipe; flags give what was asked)."""
    def record(folder, job: dict, checkpoint: str, data_source: str, graphs: list, device: str, started: str,
               seconds: float) -> None:
        from compress.pipeline.run_report import write_run_report

        asked = recipe or {"kind": "graph", "model": job["checkpoint"], "data": data_source, "spec": job["spec"],
                           "finetune_epochs": job["finetune_epochs"], "out": job.get("out")}
        write_run_report(folder, graph_run_report(job, checkpoint, data_source, graphs, device, started, seconds,
                                                  asked, gates))
    return record
