"""The metrics a job measured, by name, for gates and report.json.

Each eval stage gives `ppl` (after its stages), and with `before`: `ppl_before` and `ppl_ratio` (after /
before, so relative to the model as loaded); with zero-shot tasks, `accuracy.TASK` (lm-eval's acc) and with
`before`: `recovery.TASK` (accuracy after / before, as llm-compressor's CI gates); unqualified `accuracy` and
`recovery` are the mean over the stage's tasks. `compress eval --kernels` adds `speedup` (tokens/s on the
sparse kernels / on the dense path, both as CUDA graphs). Names are qualified by the stage's name (`eval.ppl_ratio`);
the last eval stage's are also unqualified (`ppl_ratio`). A graph job's graph_prune stage gives
`accuracy`, `accuracy_before`, `recovery`, `loss`, `loss_before` and `flops_ratio` on the test split.
"""
from __future__ import annotations

__all__ = ["planned_metrics", "measured_metrics"]


def _eval_names(config) -> list[str]:
    names = ["ppl"] + (["ppl_before", "ppl_ratio"] if config.before else [])
    tasks = list(getattr(config, "tasks", None) or [])
    if tasks:
        names += ["accuracy"] + [f"accuracy.{t}" for t in tasks]
        if config.before:
            names += ["recovery"] + [f"recovery.{t}" for t in tasks]
    return names


def _task_accuracy(zero_shot: dict | None) -> dict[str, float]:
    """{task: acc} from lm-eval's results shape ({"results": {task: {"acc,none": x, ...}}})."""
    found = {}
    for task, values in ((zero_shot or {}).get("results") or {}).items():
        if isinstance(values, dict) and isinstance(values.get("acc,none"), (int, float)):
            found[task] = float(values["acc,none"])
    return found


def _eval_values(result: dict) -> dict[str, float]:
    values = {"ppl": float(result["after"]["perplexity"])}
    before = result.get("before")
    if before:
        values["ppl_before"] = float(before["perplexity"])
        values["ppl_ratio"] = values["ppl"] / values["ppl_before"]
        if result["after"].get("tokens_per_second") and before.get("tokens_per_second"):  # eval --kernels
            values["speedup"] = result["after"]["tokens_per_second"] / before["tokens_per_second"]
    after_acc, before_acc = _task_accuracy(result.get("zero_shot")), _task_accuracy(result.get("zero_shot_before"))
    for task, acc in after_acc.items():
        values[f"accuracy.{task}"] = acc
        if task in before_acc and before_acc[task] > 0:
            values[f"recovery.{task}"] = acc / before_acc[task]
    for name in ("accuracy", "recovery"):
        each = [v for k, v in values.items() if k.startswith(name + ".")]
        if each:
            values[name] = sum(each) / len(each)
    return values


def _graph_values(result: dict) -> dict[str, float]:
    """A graph_prune stage: the test split's accuracy and loss of the pruned model and of the checkpoint as
    loaded (`_before`), `recovery` (accuracy after / before) and `flops_ratio` (nonzero FLOPs after / before)."""
    before, after = result["reference"], result["pruned"]
    values = {"accuracy": float(after["accuracy"]), "accuracy_before": float(before["accuracy"]),
              "loss": float(after["loss"]), "loss_before": float(before["loss"])}
    if before["accuracy"] > 0:
        values["recovery"] = values["accuracy"] / values["accuracy_before"]
    if before.get("nonzero_flops"):
        values["flops_ratio"] = after["nonzero_flops"] / before["nonzero_flops"]
    return values


GRAPH_METRICS = ("accuracy", "accuracy_before", "recovery", "loss", "loss_before", "flops_ratio")


def planned_metrics(recipe) -> set[str]:
    """The metric names a recipe's stages will measure (known before any work)."""
    names: set[str] = set()
    if getattr(recipe, "kind", None) == "graph":  # one graph_prune stage
        stage = recipe.stage_names()[0]
        return set(GRAPH_METRICS) | {f"{stage}.{m}" for m in GRAPH_METRICS}
    evals = [(n, s) for n, s in zip(recipe.stage_names(), recipe.stages) if s.kind == "eval"]
    for index, (stage_name, config) in enumerate(evals):
        own = _eval_names(config)
        names.update(f"{stage_name}.{m}" for m in own)
        if index == len(evals) - 1:
            names.update(own)
    return names


def measured_metrics(stages: list[dict]) -> dict[str, float]:
    """The metrics in a report's stages (report.json's "stages": {name, kind, result})."""
    metrics: dict[str, float] = {}
    for kind, values in (("eval", _eval_values), ("graph_prune", _graph_values)):
        measured = [s for s in stages if s["kind"] == kind]
        for index, stage in enumerate(measured):
            own = values(stage["result"])
            metrics.update({f"{stage['name']}.{k}": v for k, v in own.items()})
            if index == len(measured) - 1:
                metrics.update(own)
    return dict(sorted(metrics.items()))
