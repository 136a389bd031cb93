"""report.json of a graph pruning job (compress graph prune, or a graph recipe): the same record as a
language-model job's (compress.pipeline.run_report), with the graphs' digest in place of token digests."""
from __future__ import annotations

__all__ = ["graph_run_report"]


def graph_run_report(job: dict, checkpoint: str, data_source: str, graphs: list, device: str, started: str,
                     seconds: float, recipe: dict):
    """`job`: prune_checkpoint's report; `graphs`: the calibration and test graphs the job used."""
    from compress.pipeline.gates import check_gates
    from compress.pipeline.metrics import measured_metrics
    from compress.pipeline.report import StageReport
    from compress.pipeline.run_report import Inputs, RunReport, file_digest, provenance, tensors_digest
    from compress.pipeline.stages.graph_prune import GraphPruneResult
    from compress.provenance import machine, versions

    result = GraphPruneResult.model_validate({key: job[key] for key in GraphPruneResult.model_fields if key in job})
    stage = StageReport(name="graph_prune", kind="graph_prune", seconds=round(seconds, 3), result=result)
    tensors = [t for graph in graphs for t in (graph.x, graph.edge_index, getattr(graph, "edge_attr", None), graph.y)
               if t is not None]
    metrics = measured_metrics([stage.model_dump(mode="json")])
    gates = check_gates([], metrics)
    return RunReport(model=str(checkpoint), dtype="float32", device=device, stages=[stage], recipe=recipe,
                     versions=versions(), seconds_total=round(seconds, 3), out=job.get("out"), kind="graph",
                     inputs=Inputs(model=file_digest(checkpoint), data=tensors_digest(tensors, data_source)),
                     seed=job.get("spec", {}).get("seed"), machine=machine(), provenance=provenance(),
                     started=started, metrics=metrics, gates=gates, gates_passed=True)
