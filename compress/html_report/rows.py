"""The report's tables as data: each section is a list of rows keyed so that the same row of several runs lines
up (one column per run); a run without that row gets an empty cell."""
from __future__ import annotations

import math
from dataclasses import dataclass

from compress.pipeline.metrics import _task_accuracy as task_accuracy  # lm-eval's {task: acc}

__all__ = ["Cell", "Row", "merge", "summary_rows", "metric_rows", "gate_rows", "named_metric_rows", "timing_rows",
           "total_rows", "number", "short_hash"]


@dataclass
class Cell:
    text: str
    kind: str = "text"  # text | num | code | pass | breach | missing
    title: str | None = None  # the whole value, on hover (a full digest)


@dataclass
class Row:
    label: str
    cells: list[Cell]


def number(value, spec: str = ".4g", unit: str = "") -> Cell:
    if value is None:
        return Cell("—", "missing")
    if spec.endswith("d"):
        return Cell(f"{int(value):{spec}}{unit}", "num")
    value = float(value)
    if not math.isfinite(value):
        return Cell("inf" if value > 0 else "-inf" if value < 0 else "nan", "num")
    return Cell(f"{value:{spec}}{unit}", "num")


def percent(value) -> Cell:
    return number(None if value is None else float(value) * 100, ".2f", "%")


def short_hash(digest: str | None, length: int = 12) -> Cell:
    return Cell(digest[:length] + "…", "code", digest) if digest else Cell("—", "missing")


def merge(per_run: list[list[tuple[str, str, Cell]]]) -> list[Row]:
    """[(key, label, cell), ...] of each run → rows in order of first appearance, one cell per run."""
    labels: dict[str, str] = {}
    cells: dict[str, dict[int, Cell]] = {}
    for run, entries in enumerate(per_run):
        for key, label, cell in entries:
            labels.setdefault(key, label)
            cells.setdefault(key, {})[run] = cell
    return [Row(labels[key], [cells[key].get(run, Cell("", "missing")) for run in range(len(per_run))])
            for key in labels]


def _mean(values) -> float | None:
    found = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(found) / len(found) if found else None


def _pattern(pattern: dict | None) -> str:
    if not isinstance(pattern, dict):
        return "—"
    if "n" in pattern and "m" in pattern:
        return f"{pattern['n']}:{pattern['m']}"
    if isinstance(pattern.get("sparsity"), (int, float)):
        return f"{pattern['sparsity'] * 100:g}% unstructured"
    return str(pattern.get("type", "—"))


def _digest_text(digest: dict) -> Cell:
    sha = digest.get("sha256")
    text = f"{digest.get('source')}: {digest.get('tokens')} tokens, sha256 {sha[:12] + '…' if sha else '—'}"
    return Cell(text, "text", sha)


def summary_rows(report: dict) -> list[tuple[str, str, Cell]]:
    inputs, provenance, machine = report["inputs"], report["provenance"], report["machine"]
    model = inputs["model"]
    rows = [("kind", "job", Cell(report["kind"])),
            ("command", "command", Cell(provenance["command"], "code")),
            ("model", "model", Cell(report["model"], "text", report.get("model_note"))),
            ("model.sha256", "model sha256", short_hash(model.get("sha256"))),
            ("model.size", "model files", Cell(f"{model.get('files', 0)} files, {model.get('bytes', 0):,} bytes"))]
    if inputs.get("calibration"):
        rows.append(("calibration", "calibration tokens", _digest_text(inputs["calibration"])))
    evaluations = inputs.get("evaluation") or []
    for index, digest in enumerate(evaluations):
        which = f" ({digest['stage']})" if digest.get("stage") else f" {index + 1}" if len(evaluations) > 1 else ""
        rows.append((f"evaluation.{index}", f"evaluation tokens{which}", _digest_text(digest)))
    if inputs.get("data"):  # a graph job's graphs
        data = inputs["data"]
        rows.append(("data", "data", Cell(f"{data['source']}: {data.get('bytes', 0):,} bytes, sha256 "
                                          f"{(data.get('sha256') or '—')[:12]}…", "text", data.get("sha256"))))
    for index, other in enumerate((inputs.get("models") or [])[1:], start=2):  # compress eval of several models
        rows.append((f"model.{index}", f"model {index}", Cell(f"{other['source']}, sha256 "
                                                            f"{(other.get('sha256') or '—')[:12]}…", "text",
                                                            other.get("sha256"))))
    commit = provenance.get("commit")
    rows.append(("commit", "commit", Cell(f"{commit[:12]} ({provenance['state']})" if commit
                                          else f"none ({provenance['state']})", "code", commit)))
    rows += [(f"version.{name}", f"{name} version", Cell(version, "code"))
             for name, version in report.get("versions", {}).items()]
    gpu = f", {machine.get('gpu_count')}× {machine.get('gpu')}" if machine.get("gpu") else ""
    rows += [("device", "device", Cell(f"{report['device']} ({report['dtype']})")),
             ("machine", "machine", Cell(f"{machine.get('cpu') or '?'} ({machine.get('cpu_count') or '?'} CPUs){gpu}",
                                         "text", machine.get("platform"))),
             ("seed", "seed", number(report.get("seed"), "d")),
             ("started", "started", Cell(report["started"])),
             ("seconds_total", "total seconds", number(report.get("seconds_total"), ".1f"))]
    breached = [g["metric"] for g in report["gates"] if not g["passed"]]
    verdict = (Cell("none", "missing") if not report["gates"] else
               Cell(f"breached: {', '.join(breached)}", "breach") if breached else
               Cell(f"all {len(report['gates'])} passed", "pass"))
    rows.append(("gates", "gates", verdict))
    return rows


def _eval_rows(name: str, result: dict, metrics: dict) -> list[tuple[str, str, Cell]]:
    before, after = result.get("before") or {}, result.get("after") or {}
    rows = [(f"{name}.source", f"{name} · text", Cell(result["source"]))]
    if "model" in after:  # compress eval: which model (and attention) each side measured
        rows.append((f"{name}.models", f"{name} · before → after",
                     Cell(f"{before.get('model', '—')} → {after['model']}")))
    rows += [(f"{name}.ppl_before", f"{name} · perplexity before", number(before.get("perplexity"), ".6g")),
             (f"{name}.ppl", f"{name} · perplexity after", number(after.get("perplexity"), ".6g")),
             (f"{name}.ppl_ratio", f"{name} · perplexity after / before",
              number(metrics.get(f"{name}.ppl_ratio"), ".4f"))]
    if "kept_share" in after:  # Double Sparsity attention measured `after`
        rows += [(f"{name}.budget", f"{name} · Double Sparsity token budget", number(after.get("budget"), ".4g")),
                 (f"{name}.kept_per_query", f"{name} · tokens kept per query",
                  number(after.get("kept_per_query"), ".4g")),
                 (f"{name}.kept_share", f"{name} · kept share of visible tokens", percent(after.get("kept_share")))]
    accuracy, accuracy_before = task_accuracy(result.get("zero_shot")), task_accuracy(result.get("zero_shot_before"))
    for task in dict.fromkeys([*accuracy_before, *accuracy]):
        if task in accuracy_before:
            rows.append((f"{name}.accuracy_before.{task}", f"{name} · {task} accuracy before",
                         number(accuracy_before[task], ".4f")))
        rows.append((f"{name}.accuracy.{task}", f"{name} · {task} accuracy after", number(accuracy.get(task), ".4f")))
        if f"{name}.recovery.{task}" in metrics:
            rows.append((f"{name}.recovery.{task}", f"{name} · {task} recovery (after / before)",
                         number(metrics[f"{name}.recovery.{task}"], ".4f")))
    return rows


def _layer_rows(name: str, layers: list[dict]) -> list[tuple[str, str, Cell]]:
    rows = [(f"{name}.layers", f"{name} · layers", number(len(layers), "d"))]
    error = _mean(layer.get("relative_error") for layer in layers)
    if error is not None:
        rows.append((f"{name}.relative_error", f"{name} · mean relative error per layer", number(error, ".4g")))
    return rows


def _reference_rows(name: str, reference: dict, pruned: dict) -> list[tuple[str, str, Cell]]:
    """Each number measured on both the checkpoint as loaded and the pruned model (a graph job's test split)."""
    rows = []
    for key, value in reference.items():
        if isinstance(value, (int, float)) and isinstance(pruned.get(key), (int, float)):
            spec = "d" if isinstance(value, int) and not isinstance(value, bool) else ".4f"
            rows += [(f"{name}.{key}.reference", f"{name} · {key}: checkpoint", number(value, spec)),
                     (f"{name}.{key}.pruned", f"{name} · {key}: pruned", number(pruned[key], spec))]
    return rows


def named_metric_rows(report: dict) -> list[tuple[str, str, Cell]]:
    """report.json's named metrics: the names gates read."""
    return [(name, name, number(value, ".6g")) for name, value in report["metrics"].items()]


def metric_rows(report: dict) -> list[tuple[str, str, Cell]]:
    rows = []
    for stage in report["stages"]:
        name, kind, result = stage["name"], stage["kind"], stage["result"]
        if kind == "prune":
            rows += [(f"{name}.method", f"{name} · method", Cell(f"{result['method']} {_pattern(result.get('pattern'))}")),
                     (f"{name}.sparsity", f"{name} · sparsity of pruned Linears", percent(result.get("overall_sparsity")))]
            rows += _layer_rows(name, result.get("layers") or [])
        elif kind == "factorize":
            rows += [(f"{name}.experts", f"{name} · experts", Cell(f"{result['experts']} experts, top-{result['top_k']}, "
                                                                   f"{result['split']} split")),
                     (f"{name}.ffn_flops", f"{name} · FFN FLOPs per token vs dense", percent(result.get("ffn_flops_share")))]
            rows += _layer_rows(name, result.get("layers") or [])
        elif kind == "eval":
            rows += _eval_rows(name, result, report["metrics"])
        elif isinstance(result.get("reference"), dict) and isinstance(result.get("pruned"), dict):  # graph_prune
            rows += _reference_rows(name, result["reference"], result["pruned"])
        elif kind == "attention":
            rows.append((f"{name}.channel_file", f"{name} · channel file", Cell(result["channel_file"], "code")))
        elif kind == "export":
            rows.append((f"{name}.format", f"{name} · format", Cell(str(result.get("format", "—")))))
    return rows


def gate_rows(report: dict) -> list[tuple[str, str, Cell]]:
    rows = []
    for gate in report["gates"]:
        text = f"{gate['metric']} {gate['op']} {gate['limit']:g}"
        measured = number(gate["measured"], ".6g")
        verdict = "pass" if gate["passed"] else "breach"
        rows.append((text, text, Cell(f"{measured.text} {verdict}", verdict)))
    return rows


def timing_rows(report: dict) -> list[tuple[str, str, Cell]]:
    return [(f"stage.{s['name']}", f"{s['name']} ({s['kind']})", number(s["seconds"], ".2f")) for s in report["stages"]]


def total_rows(report: dict) -> list[tuple[str, str, Cell]]:
    return [("total", "whole job", number(report.get("seconds_total"), ".2f"))]
