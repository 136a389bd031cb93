"""How many N:M groups of the default model tie in |W| at the keep/drop boundary (magnitude's choice is then arbitrary).

The default model is dequantized from a Q4_1 GGUF (16 levels per block of 32 weights), so equal |W| are common.
A group ties when its N-th and (N+1)-th largest |W| are equal. Every Linear inside the decoder layers counts.
Usage: python -m benchmarks.ties --out benchmarks/results/ties.json [--patterns 2:4 4:8 6:8]
       python -m benchmarks.ties --tiny --out /tmp/tiny.json   # tiny random model: a quick check
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile

import torch

from benchmarks._meta import meta
from benchmarks._tiny import tiny_model


def boundary_ties(weight: torch.Tensor, n: int, m: int) -> tuple[int, int]:
    """(groups, groups whose n-th and (n+1)-th largest |W| are equal), groups of m along the input dim."""
    groups = weight.abs().reshape(-1, m).sort(dim=1, descending=True).values
    return groups.shape[0], int((groups[:, n - 1] == groups[:, n]).sum())


def main() -> None:
    from compress.model.loading import load_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--patterns", nargs="+", default=["2:4", "4:8", "6:8"])
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    run_meta = meta()
    with tempfile.TemporaryDirectory() as tmp:
        model, _, source = load_model(tiny_model(tmp)[0] if args.tiny else None, "float32", "cpu")
    linears = {name: mod for name, mod in model.named_modules()
               if isinstance(mod, torch.nn.Linear) and re.search(r"\.layers\.\d+\.", name)}
    rows = []
    for pattern in args.patterns:
        n, m = (int(v) for v in pattern.split(":"))
        roles: dict[str, list[int]] = {}
        for name, linear in linears.items():
            groups, tied = boundary_ties(linear.weight.data, n, m)
            role = roles.setdefault(name.rsplit(".", 1)[-1], [0, 0])
            role[0], role[1] = role[0] + groups, role[1] + tied
        groups, tied = sum(g for g, _ in roles.values()), sum(t for _, t in roles.values())
        rows.append({"pattern": pattern, "groups": groups, "tied": tied, "tied_fraction": tied / groups,
                     "by_role": {r: {"groups": g, "tied": t, "tied_fraction": t / g} for r, (g, t) in roles.items()}})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "by_role"}), flush=True)
    result = {"meta": run_meta, "model": "tiny random Llama" if args.tiny else source,
              "dtype": "float32", "linears": len(linears), "rows": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
