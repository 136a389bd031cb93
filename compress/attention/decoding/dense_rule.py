"""When a Double Sparsity decode step pays: the rule under which a step stays dense, so sparse decoding is never
slower than dense.

A sparse layer-step costs a chain of small launches (label append, threshold, scoring, select, attention,
merge) that dense attention does not pay, and saves reading most of the KV cache. So it pays only once a
layer's KV cache is large enough per row (sequence × KV head), and the crossover falls as rows grow (more
rows fill more of the GPU in the sparse kernels). The rule: a step runs sparse when

    context × head_dim / measured_head_dim ≥ crossover(batch × kv_heads)

where `crossover(rows)` is the smallest context from which a whole sparse decode step was measured faster than
the dense one by the table's margin, at every larger context measured (benchmarks/attention_crossover.py,
the default model's architecture). Between measured row counts the smaller row count's crossover applies, and
a crossover is raised to at least that of every larger row count measured: noise never makes fewer rows look
cheaper. Below the fewest rows measured: never sparse. None: sparse never paid up to the largest context
measured.

The crossovers are stored per GPU name (torch.cuda.get_device_name()) in dense_rule.json beside this module;
a GPU not in the table, and the CPU, get the table's fallback (conservative: sparse only for many rows and
long contexts). Two per GPU: `crossover` for decode steps run as CUDA graphs (the benchmarks' decoder), and
`eager_crossover` for steps run eagerly, as stock `model.generate` runs DoubleSparseCache: there each of the
sparse step's launches costs host time (Python, Triton's launcher), so sparse pays later or not at all.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["DenseRule", "rule_for", "rule_for_device", "crossovers", "store_rule", "TABLE"]

TABLE = Path(__file__).with_name("dense_rule.json")


@dataclass(frozen=True)
class DenseRule:
    """Measured crossovers of one GPU class: `crossover` {rows (batch × KV heads): smallest context, or None};
    contexts are of `head_dim`-channel heads; `source` names the measurement."""

    name: str
    crossover: dict[int, int | None]
    head_dim: int = 64
    source: str = ""

    def threshold(self, rows: int) -> float:
        """The context from which `rows` rows decode sparsely (inf: never)."""
        measured = sorted(self.crossover)
        at_or_below = [m for m in measured if m <= rows]
        if not at_or_below:
            return float("inf")
        values = [self.crossover[m] for m in measured if m >= at_or_below[-1]]
        return max(float("inf") if v is None else float(v) for v in values)

    def sparse(self, batch: int, context: int, kv_heads: int, head_dim: int) -> bool:
        """Whether a decode step over `context` cached tokens (the new one included) runs sparse."""
        return context * head_dim / self.head_dim >= self.threshold(batch * kv_heads)

    def as_json(self) -> dict:
        return {"crossover": {str(k): v for k, v in sorted(self.crossover.items())}, "head_dim": self.head_dim,
                "source": self.source}


def _rule(name: str, entry: dict) -> DenseRule:
    return DenseRule(name, {int(k): v for k, v in entry["crossover"].items()}, entry.get("head_dim", 64),
                     entry.get("source", ""))


@lru_cache(maxsize=None)
def _table(path: str) -> dict:
    return json.loads(Path(path).read_text())


def rule_for(gpu: str | None, table: Path | str = TABLE, eager: bool = False) -> DenseRule:
    """The stored rule of GPU `gpu` (its torch.cuda.get_device_name()), else the fallback (also for None: the
    CPU); `eager`: for steps run eagerly (the GPU's eager crossovers, else the fallback's)."""
    stored = _table(str(table))
    entry = stored["gpus"].get(gpu)
    if eager:
        if entry is None or "eager_crossover" not in entry:
            gpu, entry = "fallback", stored["fallback"]
        entry = {**entry, "crossover": entry["eager_crossover"]}
        return _rule(f"{gpu} (eager)", entry)
    return _rule(gpu, entry) if entry is not None else _rule("fallback", stored["fallback"])


def rule_for_device(device: torch.device | str, eager: bool = False) -> DenseRule:
    device = torch.device(device)
    return rule_for(torch.cuda.get_device_name(device) if device.type == "cuda" else None, eager=eager)


def crossovers(timings: list[dict], margin: float) -> dict[int, int | None]:
    """{rows: smallest context from which sparse_ms × margin ≤ dense_ms at every larger context measured, or
    None} from rows of {"rows", "context", "dense_ms", "sparse_ms"}."""
    found = {}
    for rows in sorted({t["rows"] for t in timings}):
        measured = sorted((t for t in timings if t["rows"] == rows), key=lambda t: t["context"])
        crossover = None
        for t in reversed(measured):
            if t["sparse_ms"] * margin > t["dense_ms"]:
                break
            crossover = t["context"]
        found[rows] = crossover
    return found


def store_rule(result: dict, table: Path | str = TABLE) -> dict:
    """Write the crossovers of a benchmarks/attention_crossover.py result into `table` under its GPU's name
    (replacing that GPU's entry); the entry written."""
    import os
    import tempfile

    from compress.errors import BadInput

    measured = result["rule"]
    if measured["gpu"] == "cpu":
        raise BadInput("a CPU run measures no GPU's crossovers (the CPU takes the fallback)")
    stamp = result.get("meta", {})
    entry = {"crossover": measured["crossover"], "head_dim": measured["head_dim"], "margin": measured["margin"],
             "source": f"{measured['source']}; code of {str(stamp.get('commit', '?'))[:7]}, {stamp.get('date', '?')}"}
    if "eager_rule" in result:  # runs since the eager grid was added
        entry["eager_crossover"] = result["eager_rule"]["crossover"]
    stored = json.loads(Path(table).read_text())
    stored["gpus"][measured["gpu"]] = entry
    handle, temporary = tempfile.mkstemp(dir=Path(table).parent, suffix=".json")
    with os.fdopen(handle, "w") as f:
        json.dump(stored, f, indent=2)
        f.write("\n")
    os.replace(temporary, table)
    _table.cache_clear()
    return entry
