"""Every method × pattern on the default model, each in its own `compress prune` process.

Records wall time and peak resident memory (from the child's rusage) of each prune, then measures the
dense and every pruned checkpoint with one `compress eval` on the same held-out tokens.
Usage: python -m benchmarks.cpu_methods --out benchmarks/results/cpu-methods.json [--nsamples 32 --seqlen 512]
       python -m benchmarks.cpu_methods --tiny --out /tmp/tiny.json   # tiny random model, one row: a quick check
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmarks._meta import meta
from benchmarks._tiny import tiny_model

PATTERNS = {"2:4": ("--pattern", "2:4"), "6:8": ("--pattern", "6:8"), "0.5": ("--sparsity", "0.5")}
METHODS = ["magnitude", "wanda", "sparsegpt", "ria"]


def run(args: list[str]) -> tuple[dict, float, float]:
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", "from compress.cli import app; app()", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    stdout = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"failed ({status}): compress {' '.join(args)}")
    return json.loads(stdout), time.perf_counter() - started, usage.ru_maxrss / 2**20  # KiB → GiB


def prune_result(report: dict) -> dict:
    """The prune part of a `compress prune --json` report (a stage of the pipeline report, or its older `prune` key)."""
    if "prune" in report:
        return report["prune"]
    return next(stage["result"] for stage in report["stages"] if stage["kind"] == "prune")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--nsamples", default="32")
    parser.add_argument("--seqlen", default="512")
    parser.add_argument("--eval-tokens", default="32768")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", default=METHODS)
    parser.add_argument("--patterns", nargs="+", default=list(PATTERNS), help="2:4 6:8 0.5 (0.5: unstructured)")
    parser.add_argument("--tiny", action="store_true", help="tiny random model and text, one row")
    args = parser.parse_args()
    run_meta = meta()
    rows, outputs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        model, text = [], []
        if args.tiny:
            path, text_file = tiny_model(tmp)
            model, text = [path], ["--text", text_file]
            args.methods, args.patterns, args.nsamples, args.seqlen, args.eval_tokens = (
                ["wanda"], ["2:4"], "4", "32", "256")
        calibration = ["--nsamples", args.nsamples, "--seqlen", args.seqlen, *text]
        for flag, value in (PATTERNS[p] for p in args.patterns):
            for method in args.methods:
                out = os.path.join(tmp, f"{method}-{value.replace(':', 'of')}")
                data = [] if method == "magnitude" else calibration  # prune refuses options a method ignores
                report, wall, rss = run(["prune", *model, "--method", method, flag, value, "--out", out, *data,
                                         "--device", args.device, "--json", "-q"])
                pruned = prune_result(report)
                rows.append({"method": method, "pattern": value, "prune_s": round(pruned["seconds"], 1),
                             "process_s": round(wall, 1), "peak_rss_gib": round(rss, 2),
                             "sparsity": round(pruned["overall_sparsity"], 4)})
                outputs.append(out)
                print(json.dumps(rows[-1]), flush=True)
        eval_text = ["--text", text[1], "--context", "64"] if args.tiny else []
        evaluation, _, _ = run(["eval", report["model"], *outputs, "--max-tokens", args.eval_tokens,
                                "--device", args.device, "--json", "-q", *eval_text])
    dense, *pruned = evaluation["results"]
    for row, result in zip(rows, pruned):
        row["pruned_ppl"] = round(result["perplexity"], 3)
    summary = {"meta": run_meta, "versions": report["versions"], "calibration": report["calibration"],
               "eval": {"source": evaluation["source"], "tokens": dense["tokens"], "context": dense["context"]},
               "dense_ppl": round(dense["perplexity"], 3), "rows": rows}
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
