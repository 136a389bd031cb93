"""The factorized FFN that `compress factorize --active A` makes, timed on a GPU against the dense FFN it came
from: a 7B-shape Llama MLP (4096 -> 11008, bf16) cut into 16 groups of 688 neurons, S shared groups that every
token runs and k of E routed ones (--active 0.25: S2 + 2 of 14; 0.5: S4 + 4 of 12; 0.75: S6 + 6 of 10), in
FactorizedMLP's own inference paths: up to 16 tokens the Triton decode kernels, up to a few thousand the
blocked Triton kernels (both with the shared part in the same launches), more the grouped matmuls beside the
shared part's matmuls.
Per token count (1, 16, 256 and 8 x 2048) each forward runs in a CUDA graph; each replay is timed alone after a
write of 256 MB that evicts the weights from L2 (decode rows read the weights from HBM as a real model's layers
do); the median of --repeats replays. The router is random (the timing depends on how many experts the
tokens choose, reported as the busiest expert's load over its fair share), the groups a random partition.
Checks first, with the test suite's rule: every path's output within 1e-2 (relative) of the loop over the
chosen experts plus the shared part (FactorizedMLP in training mode, bf16) at each token count timed.
Then end to end: a random 32-layer 7B-shape Llama, one decode step (static KV cache of --context tokens, one
CUDA graph) and a 2048-token prefill, dense against every layer's MLP factorized at --active 0.25.
Usage: python -m benchmarks.factorize_active_gpu --json benchmarks/results/factorize-active-gpu-h100.json
       python -m benchmarks.factorize_active_gpu --tiny --json /tmp/tiny.json   # small shapes; CPU without CUDA
"""
from __future__ import annotations

import argparse
import json

import torch

from benchmarks._meta import meta
from benchmarks.factorize_gpu import dense_mlp, time_forward
from compress.factorize import FactorizedMLP
from compress.factorize.config import ACTIVE_GROUPS, translate_active

TOKENS = [(1, 1), (16, 1), (1, 256), (8, 2048)]  # (batch, tokens): decode of one and of 16 rows, a chunk, prefill


def factorized(dense, active: float, seed: int = 0) -> FactorizedMLP:
    """`dense` cut as --active cuts it (random groups, random router), on dense's device and dtype."""
    shape = translate_active(active)
    intermediate = dense.gate_proj.out_features
    m = intermediate // ACTIVE_GROUPS
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randperm(intermediate, generator=generator).to(dense.gate_proj.weight.device)
    shared = ids[: shape["shared"] * m].sort().values
    groups = ids[shape["shared"] * m: (shape["shared"] + shape["experts"]) * m].reshape(shape["experts"], m)
    moe = FactorizedMLP.from_dense(dense.gate_proj, dense.up_proj, dense.down_proj, dense.act_fn,
                                   groups.sort(1).values, shape["top_k"], shared=shared if shape["shared"] else None)
    hidden = dense.gate_proj.in_features
    with torch.no_grad():
        moe.router.weight.copy_(torch.randn(moe.router.weight.shape, generator=generator) * hidden ** -0.5)
    return moe.eval()


def busiest_load(moe: FactorizedMLP, x: torch.Tensor) -> float:
    from compress.factorize.moe import route

    with torch.no_grad():
        _, index = route(moe.router(x.reshape(-1, x.shape[-1])), moe.top_k)
    counts = torch.bincount(index.flatten(), minlength=moe.num_experts).float()
    return float(counts.max() / counts.mean())


def relative_error(moe: FactorizedMLP, x: torch.Tensor) -> float:
    with torch.no_grad():
        fast = moe(x).float()
    with torch.enable_grad():  # training mode takes the loop over the chosen experts
        loop = moe(x).detach().float()
    return float((fast - loop).norm() / loop.norm())


def path_name(tokens: int, device: str) -> str:
    from compress.factorize.launch import bounds

    if device != "cuda":
        return "loop over experts"
    limits = bounds(torch.device("cuda"))
    if tokens <= min(limits["decode"], 16):
        return "decode kernels"
    return "blocked kernels" if tokens <= limits["blocked"] else "grouped matmuls"


def parts(moe: FactorizedMLP, x: torch.Tensor) -> dict:
    from compress.factorize.moe import route

    flat = lambda h: h.reshape(-1, h.shape[-1])  # noqa: E731
    out = {"router": lambda h: route(moe.router(flat(h)), moe.top_k), "shared": lambda h: moe.shared_output(flat(h)),
           "routed": lambda h: moe.routed(flat(h))}
    if flat(x).shape[0] <= 16 and x.is_cuda:
        out["grouped matmuls + shared"] = lambda h: moe.grouped(flat(h), *route(moe.router(flat(h)), moe.top_k)) + \
            moe.shared_output(flat(h))
    return out


def ffn_rows(args, device, dtype, flush) -> tuple[list, list]:
    hidden, intermediate = (64, 256) if args.tiny else (4096, 11008)
    tokens = [(1, 1), (2, 8)] if args.tiny else TOKENS
    torch.manual_seed(0)
    dense = dense_mlp(hidden, intermediate, dtype, device)
    checks, rows = [], []
    for active in args.active:
        moe = factorized(dense, active)
        for batch, length in tokens:
            x = torch.randn(batch, length, hidden, device=device, dtype=dtype)
            if batch * length <= 4096:  # the loop reference is slow for a whole prefill
                checks.append({"active": active, "tokens": batch * length, "relative_error": relative_error(moe, x),
                               "bound": 1e-2})
                print(json.dumps(checks[-1]), flush=True)
            with torch.no_grad():
                dense_time = time_forward(dense, x, args.repeats, flush)
                moe_time = time_forward(moe, x, args.repeats, flush)
            row = {"active": active, **translate_active(active), "batch": batch, "tokens": length,
                   "path": path_name(batch * length, device),
                   "dense_ms": dense_time["ms"], "moe_ms": moe_time["ms"], "speedup": dense_time["ms"] / moe_time["ms"],
                   "graph": moe_time["graph"] and dense_time["graph"], "capture_error": moe_time["capture_error"],
                   "busiest_over_fair": busiest_load(moe, x)}
            if active == args.active[0]:  # where the time goes, and the other path at ≤ 16
                with torch.no_grad():
                    row["parts_ms"] = {name: time_forward(fn, x, args.repeats, flush)["ms"] for name, fn in parts(moe, x).items()}
            rows.append(row)
            print(json.dumps(row), flush=True)
        del moe
    return checks, rows


def end_to_end(args, dtype) -> list:
    """Dense vs every MLP factorized at the first --active: decode steps and a prefill, CUDA graphs."""
    from benchmarks.e2e_7b import decode_step, prefill
    from benchmarks.prune_7b import random_llama

    layers, hidden, intermediate, seqlen, context = (2, 512, 1024, 128, 64) if args.tiny else (32, 4096, 11008, 2048,
                                                                                                args.context)
    model = random_llama(layers, hidden, intermediate, dtype, device="cuda")
    ids = torch.randint(0, 32000, (1, seqlen), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    runs = {}
    for variant in ("dense", "factorized"):
        if variant == "factorized":
            for i, layer in enumerate(model.model.layers):
                layer.mlp = factorized(layer.mlp, args.active[0], seed=i)
            torch.cuda.empty_cache()
        for batch in args.batch:
            runs[(variant, "decode", batch)] = decode_step(model, context, batch)[0]
            print(variant, "decode", batch, round(runs[(variant, "decode", batch)], 3), flush=True)
        runs[(variant, "prefill", 1)] = prefill(model, ids)[0]
        print(variant, "prefill", round(runs[(variant, "prefill", 1)], 3), flush=True)
    rows = []
    for (variant, phase, batch), ms in runs.items():
        if variant == "factorized":
            dense_ms = runs[("dense", phase, batch)]
            tokens = batch * (seqlen if phase == "prefill" else 1)
            rows.append({"phase": phase, "batch": batch, "tokens": tokens, "active": args.active[0],
                         "context": context if phase == "decode" else None, "dense_ms": dense_ms, "factorized_ms": ms,
                         "dense_tok_s": tokens / dense_ms * 1e3, "factorized_tok_s": tokens / ms * 1e3,
                         "speedup": dense_ms / ms})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def _launch_entry(device: str) -> str:
    """The launch settings and hand-over points the run used (compress/factorize/launch_settings.json), as JSON
    text (its keys are the table's, not this file's)."""
    from compress.factorize.launch import _entry

    entry = _entry(torch.device(device)) if device == "cuda" else {}
    return json.dumps(entry, sort_keys=True) if entry else "none stored for this GPU: the kernels' defaults"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", required=True)
    parser.add_argument("--active", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="decode batches end to end")
    parser.add_argument("--context", type=int, default=1024, help="KV cache tokens of the end-to-end decode step")
    parser.add_argument("--no-e2e", action="store_true")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    run_meta = meta()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    args.repeats = 3 if args.tiny else args.repeats
    flush = torch.zeros(64 * 2**20, device=device, dtype=torch.float32) if device == "cuda" else None
    checks, rows = ffn_rows(args, device, dtype, flush)
    result = {"meta": run_meta, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "dtype": str(dtype).replace("torch.", ""), "hidden": 64 if args.tiny else 4096,
              "intermediate": 256 if args.tiny else 11008, "groups": ACTIVE_GROUPS,
              "launch_settings": _launch_entry(device), "checks": checks, "rows": rows,
              "checks_pass": all(c["relative_error"] < c["bound"] for c in checks), "end_to_end": []}
    del flush
    result["peak_gib"] = None
    if device == "cuda" and not args.no_e2e:
        torch.cuda.empty_cache()
        result["end_to_end"] = end_to_end(args, dtype)
        result["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
