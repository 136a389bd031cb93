"""Every method × pattern on the default model, each in its own `compress prune` process.

Records wall time, peak resident memory (from the child's rusage) and dense/pruned perplexity.
Usage: python benchmarks/cpu_methods.py --out benchmarks/results/cpu-methods.json [--nsamples 32 --seqlen 512]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
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
    common = ["--nsamples", args.nsamples, "--seqlen", args.seqlen, "--eval", "--eval-tokens", args.eval_tokens,
              "--device", args.device, "--json", "-q"]
    rows = []
    for flag, value in PATTERNS:
        for method in METHODS:
            report, wall, rss = run(["prune", "--method", method, flag, value, *common])
            ppl = report["perplexity"]
            row = {"method": method, "pattern": value, "dense_ppl": round(ppl["dense"]["perplexity"], 3),
                   "pruned_ppl": round(ppl["pruned"]["perplexity"], 3), "prune_s": round(report["prune"]["seconds"], 1),
                   "process_s": round(wall, 1), "peak_rss_gib": round(rss, 2),
                   "sparsity": round(report["prune"]["overall_sparsity"], 4)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            with open(args.out, "w") as f:
                json.dump({"versions": report["versions"], "calibration": report["calibration"],
                           "eval_tokens": ppl["dense"]["tokens"], "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
