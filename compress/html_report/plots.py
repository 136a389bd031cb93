"""Which charts the reports call for: per-layer sparsity and reconstruction error (prune, factorize), expert load
(factorize), kept tokens (evaluation with Double Sparsity attention) and stage timings; one series per run.
Each chart is a matplotlib figure (compress.html_report.figures) headed by what it shows."""
from __future__ import annotations

from compress.html_report.figures import Chart, Series, bar_figure, heatmap_figure

__all__ = ["Chart", "layer_charts", "kept_token_chart", "timing_chart"]


def _stage(report: dict, name: str) -> dict | None:
    return next((s for s in report["stages"] if s["name"] == name), None)


def _names(reports: list[dict], having) -> list[str]:
    """Stage names, in order of first appearance, of the stages for which `having(stage)` holds in some run."""
    return list(dict.fromkeys(s["name"] for r in reports for s in r["stages"] if having(s)))


def _layers(stage: dict | None) -> list[dict]:
    layers = (stage or {}).get("result", {}).get("layers")
    return layers if isinstance(layers, list) else []


def _per_layer(reports, labels, name, value) -> tuple[list[str], list[Series]]:
    """The layer indices of stage `name` in any run, and one series per run holding that stage."""
    indices = sorted({layer["index"] for r in reports for layer in _layers(_stage(r, name))})
    series = []
    for run, (report, label) in enumerate(zip(reports, labels)):
        stage = _stage(report, name)
        if stage is None:
            continue
        found = {layer["index"]: value(layer) for layer in _layers(stage)}
        series.append(Series(label, [found.get(i) for i in indices], run))
    return [str(i) for i in indices], _measured(series)


def _measured(series: list[Series]) -> list[Series]:
    return [s for s in series if any(v is not None for v in s.values)]


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def layer_charts(reports: list[dict], labels: list[str]) -> list[Chart]:
    charts = []
    for name in _names(reports, lambda s: bool(_layers(s))):
        kind = next(_stage(r, name)["kind"] for r in reports if _stage(r, name))
        for key, title, axis, percent in (
                ("sparsity", "sparsity per layer", "zeros in the layer's pruned Linears", True),
                ("relative_error", "reconstruction error per layer", "‖Ŷ − Y‖² / ‖Y‖², layer output", False),
                ("token_error", "per-token reconstruction error per layer", "‖ŷ − y‖² / ‖y‖², mean over tokens",
                 False)):
            def value(layer, key=key):
                return _number(layer.get("info", {}).get(key) if key == "sparsity" else layer.get(key))

            categories, series = _per_layer(reports, labels, name, value)
            if series:
                charts.append(bar_figure(categories, series, axis, percent, legend=len(reports) > 1,
                                         heading=f"{name} ({kind}): {title}"))
        charts += _load_charts(reports, labels, name, kind)
    return charts


def _load_charts(reports, labels, name, kind) -> list[Chart]:
    """One heatmap per run: the share of routed tokens each expert of each layer received (layers across, as in
    the other per-layer charts)."""
    charts = []
    for report, label in zip(reports, labels):
        layers = [layer for layer in _layers(_stage(report, name)) if isinstance(layer.get("info", {}).get("load"), list)]
        if not layers:
            continue
        experts = max(len(layer["info"]["load"]) for layer in layers)
        values = [[_number(v) for v in layer["info"]["load"]] + [None] * (experts - len(layer["info"]["load"]))
                  for layer in layers]
        charts.append(heatmap_figure([str(layer["index"]) for layer in layers], [str(e) for e in range(experts)],
                                     values, color_label="share of routed tokens",
                                     heading=f"{name} ({kind}): expert load per layer · {label}"))
    return charts


def _kept_share(stage: dict | None):
    after = ((stage or {}).get("result") or {}).get("after") or {}
    return _number(after.get("kept_share")) if stage and stage["kind"] == "eval" else None


def kept_token_chart(reports: list[dict], labels: list[str]) -> list[Chart]:
    """Double Sparsity: the share of the tokens each query could see that its attention kept, per eval stage."""
    names = _names(reports, lambda s: _kept_share(s) is not None)
    if not names:
        return []
    series = _measured([Series(label, [_kept_share(_stage(r, n)) for n in names], run)
                        for run, (r, label) in enumerate(zip(reports, labels))])
    return [bar_figure(names, series, "kept / visible tokens per query", True, "eval stage", legend=len(reports) > 1,
                       heading="Double Sparsity: kept share of visible tokens")]


def timing_chart(reports: list[dict], labels: list[str]) -> list[Chart]:
    names = _names(reports, lambda s: True)
    series = [Series(label, [(_stage(r, n) or {}).get("seconds") for n in names], run)
              for run, (r, label) in enumerate(zip(reports, labels))]
    return [bar_figure(names, series, "seconds", False, "stage", heading="seconds per stage")]
