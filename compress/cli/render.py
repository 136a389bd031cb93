"""Human-readable tables, rendered from the typed reports (rich, stdout; user text never read as markup)."""
from __future__ import annotations

from rich.table import Table
from rich.text import Text

from compress.cli.common import out

__all__ = ["print_run_report", "print_compare_report", "print_gates"]


def _pattern_text(pattern: dict) -> str:
    if pattern["type"] == "n:m":
        return f"{pattern['n']}:{pattern['m']}"
    return f"{pattern['sparsity']:.0%} unstructured"


def _prune_table(model: str, stage) -> None:
    result = stage.result
    table = Table(title=Text(f"{stage.name}: {result.method} {_pattern_text(result.pattern)} · {model}"))
    for column in ("layer", "sparsity", "seconds", "rel. error", "per token"):
        table.add_column(column, justify="right" if column != "layer" else "left")
    for layer in result.layers:
        errors = [layer.relative_error, layer.token_error]
        table.add_row(Text(layer.name), f"{layer.info['sparsity']:.1%}", f"{layer.seconds:.2f}",
                      *("—" if error is None else f"{error:.2e}" for error in errors))
    out.print(table)
    out.print(f"overall sparsity of pruned Linears {result.overall_sparsity:.2%}; pruning took {result.seconds:.1f} s")
    if result.peak_gpu_bytes is not None:
        out.print(f"peak GPU memory {result.peak_gpu_bytes / 2**30:.2f} GiB")


def _eval_line(stage) -> str:
    result = stage.result
    after = result.after
    text = f"perplexity on {result.source} ({after['tokens']} tokens, context {after['context']}): "
    if result.before:
        before = result.before["perplexity"]
        return text + f"before {before:.2f} → after {after['perplexity']:.2f} ({after['perplexity'] / before:.2f}x)"
    return text + f"{after['perplexity']:.2f}"


def print_run_report(report) -> None:
    for stage in report.stages:
        if stage.kind == "prune":
            _prune_table(report.model, stage)
        elif stage.kind == "factorize":
            from compress.cli.factorize_table import print_factorize_table

            print_factorize_table(report.model, stage)
        elif stage.kind == "eval":
            out.print(_eval_line(stage))
            if stage.result.zero_shot:
                from compress.zero_shot import summary_lines

                for line in summary_lines(stage.result.zero_shot, stage.result.zero_shot_before):
                    out.print(line)
        elif stage.kind == "export":
            out.print(f"wrote {stage.result.out} ({stage.result.format})")
        else:
            out.print(f"{stage.name}: done in {stage.seconds:.1f} s")
    print_gates(getattr(report, "gates", None) or [])  # a RunReport (report.json) carries the gates' outcomes
    out.print(f"total {report.seconds_total:.1f} s")


def print_gates(gates) -> None:
    for gate in gates:
        measured = "not measured" if gate.measured is None else f"{gate.measured:.4g}"
        out.print(f"gate {gate.metric} {gate.op} {gate.limit!r}: {measured} {'passed' if gate.passed else 'BREACHED'}")


def print_compare_report(report) -> None:
    table = Table(title=Text(f"perplexity on {report.source}"))
    speed = any("tokens_per_second" in row for row in report.results)
    kept = any("kept_share" in row for row in report.results)  # Double Sparsity: past tokens read
    for column in ("model", "perplexity", "tokens", "context", "seconds") + (("tokens/s",) if speed else ()) \
            + (("past tokens read",) if kept else ()):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in report.results:
        cells = [Text(row["model"]), f"{row['perplexity']:.3f}", str(row["tokens"]), str(row["context"]),
                 f"{row['seconds']:.1f}"]
        read = (f"{100 * row['kept_share']:.1f}% ({row['kept_per_query']:.0f} a query)"
                if row.get("kept_share") is not None else "all")
        table.add_row(*cells, *([f"{row.get('tokens_per_second', 0):,.0f}"] if speed else []), *([read] if kept else []))
    out.print(table)
