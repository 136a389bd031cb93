"""Human-readable tables for job reports (rich, on stdout)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

console = Console()


def _ppl_line(report: dict) -> str | None:
    ppl = report.get("perplexity")
    if not ppl or "pruned" not in ppl:
        return None
    dense, pruned = ppl["dense"]["perplexity"], ppl["pruned"]["perplexity"]
    return (f"perplexity on {ppl['source']} ({ppl['dense']['tokens']} tokens, context {ppl['dense']['context']}): "
            f"dense {dense:.2f} → pruned {pruned:.2f} ({pruned / dense:.2f}x)")


def print_prune_report(report: dict, out: str | None = None) -> None:
    prune = report["prune"]
    table = Table(title=f"{report['method']} {_pattern_text(report['pattern'])} · {report['model']}")
    for column in ("layer", "sparsity", "seconds", "rel. error", "per token"):
        table.add_column(column, justify="right" if column != "layer" else "left")
    for step in prune["layers"]:
        errors = [step["relative_error"], step.get("token_error")]
        table.add_row(step["name"], f"{step['info']['sparsity']:.1%}", f"{step['seconds']:.2f}",
                      *("—" if error is None else f"{error:.2e}" for error in errors))
    console.print(table)
    console.print(f"overall sparsity of pruned Linears {prune['overall_sparsity']:.2%}; "
                  f"pruning took {prune['seconds']:.1f} s; total {report['seconds_total']:.1f} s")
    if "peak_gpu_bytes" in prune:
        console.print(f"peak GPU memory {prune['peak_gpu_bytes'] / 2**30:.2f} GiB")
    line = _ppl_line(report)
    if line:
        console.print(line)
    if out:
        console.print(f"wrote {report.get('out', out)}")


def _pattern_text(pattern: dict) -> str:
    if pattern["type"] == "n:m":
        return f"{pattern['n']}:{pattern['m']}"
    return f"{pattern['sparsity']:.0%} unstructured"


def print_eval_report(report: dict) -> None:
    table = Table(title=f"perplexity on {report['source']}")
    speed = any("tokens_per_second" in row for row in report["results"])
    for column in ("model", "perplexity", "tokens", "context", "seconds") + (("tokens/s",) if speed else ()):
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in report["results"]:
        cells = [row["model"], f"{row['perplexity']:.3f}", str(row["tokens"]), str(row["context"]), f"{row['seconds']:.1f}"]
        table.add_row(*cells, *([f"{row.get('tokens_per_second', 0):,.0f}"] if speed else []))
    console.print(table)
