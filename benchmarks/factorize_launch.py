"""Launch settings of the factorized FFN's Triton kernels (compress/factorize/decode.py and blocked.py), searched
on a GPU at the shape the issue's bars name: a 7B-shape Llama MLP (4096 -> 11008, bf16) at --active 0.25
(S2 + 2 of 14 groups of 688 neurons), random router.
Coordinate search: one group of settings at a time, every combination of that group with the others at the best
found so far (decode kernels at 1 and 16 tokens; blocked kernels at 256 and 16384 tokens); then both blocked
winners, the grouped-matmul path and the dense FFN at every token count from 16 to 16384, which places the
boundaries between the paths. Each time: one forward in a CUDA graph, each replay alone after a 256 MB write
that evicts L2, median of --repeats (benchmarks/factorize_gpu.py's timer). Settings that do not compile or do not
fit are recorded with their error. With --store the winners and the hand-over points go into
compress/factorize/launch_settings.json under this GPU's name, which FactorizedMLP's paths read (launch.py).
Usage: python -m benchmarks.factorize_launch --store --json benchmarks/results/factorize-launch-h200.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import time

import torch

from benchmarks._meta import meta
from benchmarks.factorize_active_gpu import factorized
from benchmarks.factorize_gpu import dense_mlp, time_forward

DECODE_GROUPS = [{"split": [1, 2, 4], "up_n": [16, 32, 64], "up_k": [128, 256]}, {"up_warps": [2, 4, 8]},
                 {"down_n": [16, 32, 64], "down_k": [64, 128, 256]},
                 {"down_warps": [2, 4, 8], "down_stages": [1, 2, 3, 4]}]
BLOCKED_GROUPS = [{"block_t": [16, 32, 64, 128]}, {"up_n": [32, 64, 128], "up_k": [32, 64, 128]},
                  {"up_warps": [4, 8], "up_stages": [2, 3, 4]}, {"down_n": [32, 64, 128], "down_k": [32, 64, 128]},
                  {"down_warps": [4, 8], "down_stages": [2, 3, 4]}]
SPAN = [4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]


def kernel_call(moe, kind: str, launch: dict):
    from compress.factorize.blocked import experts_blocked
    from compress.factorize.decode import experts_decode, route_decode

    shared = {"shared_gate_up": moe.shared_gate_up, "shared_down": moe.shared_down}
    if kind == "decode":
        def call(x):
            weights, index = route_decode(x, moe.router.weight, moe.top_k)
            return experts_decode(x, moe.gate_up, moe.down, index, weights, launch=launch, **shared)
    else:
        def call(x):
            return experts_blocked(x, moe.router.weight, moe.gate_up, moe.down, moe.top_k, launch=launch, **shared)
    return call


def measure(moe, kind, launch, x, repeats, flush) -> float | str:
    try:
        with torch.no_grad():
            return time_forward(kernel_call(moe, kind, launch), x, repeats, flush)["ms"]
    except Exception as exc:  # a setting that does not compile or fit: recorded, not fatal
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


def coordinate(moe, kind, base, groups, x, repeats, flush, log, deadline) -> tuple[dict, float]:
    best, best_ms = dict(base), measure(moe, kind, base, x, repeats, flush)
    for group in groups:
        for values in itertools.product(*group.values()):
            if time.time() > deadline:
                return best, best_ms
            launch = {**best, **dict(zip(group, values))}
            ms = measure(moe, kind, launch, x, repeats, flush)
            log.append({"kernel": kind, "tokens": x.shape[0], "launch": launch, "ms": ms})
            print(json.dumps(log[-1]), flush=True)
            if isinstance(ms, float) and (not isinstance(best_ms, float) or ms < best_ms):
                best, best_ms = launch, ms
    return best, best_ms


def main() -> None:
    from compress.factorize.blocked import LAUNCH as BLOCKED
    from compress.factorize.decode import LAUNCH as DECODE
    from compress.factorize.moe import route

    parser = argparse.ArgumentParser()
    parser.add_argument("--json", required=True)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--budget", type=float, default=420, help="seconds for the searches")
    parser.add_argument("--store", action="store_true", help="write the result into compress/factorize/launch_settings.json")
    parser.add_argument("--tiny", action="store_true", help="small shapes, a few settings: a quick GPU check")
    args = parser.parse_args()
    run_meta = meta()
    started = time.time()
    torch.manual_seed(0)
    hidden, intermediate = (256, 1024) if args.tiny else (4096, 11008)
    dense = dense_mlp(hidden, intermediate, torch.bfloat16, "cuda")
    moe = factorized(dense, 0.25)
    flush = torch.zeros(64 * 2**20, device="cuda", dtype=torch.float32)
    tokens = lambda n: torch.randn(n, hidden, device="cuda", dtype=torch.bfloat16)  # noqa: E731
    decode_groups, blocked_groups, span = DECODE_GROUPS, BLOCKED_GROUPS, SPAN
    if args.tiny:
        decode_groups, blocked_groups, span = [{"split": [1, 2]}], [{"block_t": [16, 32]}], [4, 16, 64]
        args.repeats = 3
    log, best = [], {}
    share = args.budget / 4
    for i, (kind, n, base, groups) in enumerate([("decode", 1, DECODE, decode_groups), ("decode", 16, DECODE, decode_groups),
                                                 ("blocked", 256, BLOCKED, blocked_groups),
                                                 ("blocked", 16384, BLOCKED, blocked_groups)]):
        launch, ms = coordinate(moe, kind, base, groups, tokens(n), args.repeats, flush, log,
                                started + share * (i + 1))
        with torch.no_grad():
            dense_ms = time_forward(dense, tokens(n)[None], args.repeats, flush)["ms"]
        best[f"{kind} {n}"] = {"launch": launch, "ms": ms, "dense_ms": dense_ms}
        print(json.dumps({"best": f"{kind} {n}", **best[f"{kind} {n}"]}), flush=True)
    span = []
    for n in span:
        x = tokens(n)
        with torch.no_grad():
            row = {"tokens": n, "dense_ms": time_forward(dense, x, args.repeats, flush)["ms"],
                   "grouped_ms": time_forward(lambda h: moe.grouped(h, *route(moe.router(h), moe.top_k))
                                              + moe.shared_output(h), x, args.repeats, flush)["ms"]}
        for name in ("blocked 256", "blocked 16384"):
            row[f"{name} settings ms"] = measure(moe, "blocked", best[name]["launch"], x, args.repeats, flush)
        if n <= 16:
            row["decode 16 settings ms"] = measure(moe, "decode", best["decode 16"]["launch"], x, args.repeats, flush)
            row["decode 1 settings ms"] = measure(moe, "decode", best["decode 1"]["launch"], x, args.repeats, flush)
        span.append(row)
        print(json.dumps(row), flush=True)
    result = {"meta": run_meta, "device": torch.cuda.get_device_name(), "dtype": "bfloat16", "hidden": hidden,
              "intermediate": intermediate, "active": 0.25, "experts": moe.num_experts, "top_k": moe.top_k,
              "shared_neurons": moe.shared_width, "repeats": args.repeats, "best": best, "span": span, "search": log,
              "seconds": round(time.time() - started, 1)}
    result["entry"] = table_entry(best, span, args.json)
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    if args.store:
        from compress.factorize.launch import store

        store(result["device"], result["entry"])


def _ms(row: dict, key: str) -> float:
    value = row.get(key)
    return value if isinstance(value, float) else float("inf")


def _last_before(span: list[dict], wins) -> int:
    """The largest token count up to which `wins(row)` holds at every measured count (0 if not at the first)."""
    last = 0
    for row in span:
        if not wins(row):
            break
        last = row["tokens"]
    return last


def table_entry(best: dict, span: list[dict], source: str) -> dict:
    """launch_settings.json's entry: the searched settings and where each path stops being the fastest."""
    blocked = lambda r: min(_ms(r, "blocked 256 settings ms"), _ms(r, "blocked 16384 settings ms"))  # noqa: E731
    decode = lambda r: min(_ms(r, "decode 1 settings ms"), _ms(r, "decode 16 settings ms"))  # noqa: E731
    small = [r for r in span if r["tokens"] > 16]
    return {"decode_few": best["decode 1"]["launch"], "decode_many": best["decode 16"]["launch"],
            "blocked_small": best["blocked 256"]["launch"], "blocked_large": best["blocked 16384"]["launch"],
            "bounds": {"few": max(1, _last_before([r for r in span if r["tokens"] <= 16],
                                                  lambda r: _ms(r, "decode 1 settings ms") <= _ms(r, "decode 16 settings ms"))),
                       "decode": max(1, _last_before([r for r in span if r["tokens"] <= 16],
                                                     lambda r: decode(r) <= blocked(r))),
                       "small": _last_before(small, lambda r: _ms(r, "blocked 256 settings ms")
                                             <= _ms(r, "blocked 16384 settings ms")) or 16,
                       "blocked": _last_before(small, lambda r: blocked(r) <= r["grouped_ms"]) or 16},
            "measured_by": f"python -m benchmarks.factorize_launch --store --json {source}"}


if __name__ == "__main__":
    main()
