"""Every method × pattern on the default model, each in its own `compress prune` process.

Records wall time and peak resident memory (from the child's rusage) of each prune, then measures the
dense and every pruned checkpoint with one `compress eval` on the same held-out tokens.
Usage: python benchmarks/cpu_methods.py --out benchmarks/results/cpu-methods.json [--nsamples 32 --seqlen 512]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

PATTERNS = [("--pattern", "2:4"), ("--pattern", "6:8"), ("--sparsity", "0.5")]
METHODS = ["magnitude", "wanda", "sparsegpt", "ria"]


def run(args: list[str]) -> tuple[dict, float, float]:
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "compress.cli", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    stdout = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"failed ({status}): compress {' '.join(args)}")
    return json.loads(stdout), time.perf_counter() - started, usage.ru_maxrss / 2**20  # KiB → GiB


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--nsamples", default="32")
    parser.add_argument("--seqlen", default="512")
    parser.add_argument("--eval-tokens", default="32768")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    common = ["--nsamples", args.nsamples, "--seqlen", args.seqlen, "--device", args.device, "--json", "-q"]
    rows, outputs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for flag, value in PATTERNS:
            for method in METHODS:
                out = os.path.join(tmp, f"{method}-{value.replace(':', 'of')}")
                report, wall, rss = run(["prune", "--method", method, flag, value, "--out", out, *common])
                rows.append({"method": method, "pattern": value, "prune_s": round(report["prune"]["seconds"], 1),
                             "process_s": round(wall, 1), "peak_rss_gib": round(rss, 2),
                             "sparsity": round(report["prune"]["overall_sparsity"], 4)})
                outputs.append(out)
                print(json.dumps(rows[-1]), flush=True)
        evaluation, _, _ = run(["eval", report["model"], *outputs, "--max-tokens", args.eval_tokens,
                                "--device", args.device, "--json", "-q"])
    dense, *pruned = evaluation["results"]
    for row, result in zip(rows, pruned):
        row["pruned_ppl"] = round(result["perplexity"], 3)
    summary = {"versions": report["versions"], "calibration": report["calibration"],
               "eval": {"source": evaluation["source"], "tokens": dense["tokens"], "context": dense["context"]},
               "dense_ppl": round(dense["perplexity"], 3), "rows": rows}
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
