"""`compress eval --out DIR`: the evaluation as a job's record, report.json (with compression.json marking the
folder as ours). Each model is one eval stage: its row, or with --kernels / --double-sparsity its dense row as
`before` and its sparse row as `after`, so the metrics (ppl_ratio, speedup, recovery) and gates read as for
any job's eval stage."""
from __future__ import annotations

__all__ = ["planned_eval_metrics", "eval_run_report", "write_eval_folder"]


def _stage_names(count: int) -> list[str]:
    return ["eval"] if count == 1 else [f"eval{i}" for i in range(count)]


def planned_eval_metrics(models: int, paired: bool, kernels: bool, tasks: list[str] | None) -> set[str]:
    """The metric names `compress eval` will measure, for checking --gate before any work."""
    own = ["ppl"] + (["ppl_before", "ppl_ratio"] if paired else []) + (["speedup"] if kernels else [])
    if tasks:
        own += ["accuracy"] + [f"accuracy.{t}" for t in tasks]
        if paired:
            own += ["recovery"] + [f"recovery.{t}" for t in tasks]
    names = {f"{stage}.{m}" for stage in _stage_names(models) for m in own}
    return names | set(own)


def eval_run_report(config, report, paired: bool, started: str, seconds: float, gates: list):
    from compress.pipeline.gates import check_gates
    from compress.pipeline.metrics import measured_metrics
    from compress.pipeline.report import StageReport
    from compress.pipeline.run_report import Inputs, RunReport, TokensDigest, file_digest, provenance
    from compress.pipeline.stages.evaluate import EvalResult
    from compress.provenance import machine

    step = 2 if paired else 1
    rows = [report.results[i:i + step] for i in range(0, len(report.results), step)]
    stages = []
    for name, group in zip(_stage_names(len(rows)), rows):
        before, after = (group[0], group[1]) if paired else (None, group[0])
        result = EvalResult(source=report.source, before=before, after=after, zero_shot=after.get("zero_shot"),
                            zero_shot_before=(before or {}).get("zero_shot"))
        stages.append(StageReport(name=name, kind="eval", seconds=round(sum(r["seconds"] for r in group), 3),
                                  result=result))
    metrics = measured_metrics([stage.model_dump(mode="json") for stage in stages])
    outcomes = check_gates(gates, metrics)
    digests = [file_digest(model) for model in report.models]
    recipe = config.model_dump(mode="json", exclude_none=True)
    return RunReport(model=report.models[0], dtype=config.dtype, device=config.device, stages=stages, recipe=recipe,
                     versions=report.versions, seconds_total=round(seconds, 3), kind="eval",
                     inputs=Inputs(model=digests[0], models=digests, evaluation=[
                         TokensDigest(**{**held, "stage": stage.name}) for held, stage in zip(report.held_out, stages)]),
                     seed=None, machine=machine(), provenance=provenance(), started=started, metrics=metrics,
                     gates=outcomes, gates_passed=all(o.passed for o in outcomes))


def write_eval_folder(out, force: bool, run) -> None:
    """compression.json (the marker: the folder is ours to replace with --force) and report.json, all at once."""
    from compress.export.atomic import atomic_directory
    from compress.export.marker import write_manifest
    from compress.pipeline.run_report import write_run_report

    with atomic_directory(out, force) as tmp:
        write_manifest(tmp, {"kind": "eval", "report": "report.json"})
        write_run_report(tmp, run)
