"""FactorLLM FFN latency on a GPU: a 7B-shape dense FFN (Llama MLP 4096 -> 11008, bf16) against its factorized
mixture in the layout `compress factorize --out` writes (transformers' Mixtral MoE block), with each experts
implementation the installed transformers offers (eager, batched_mm, grouped_mm), at batch×tokens 1×1, 16×1
and 8×2048. Every forward runs in a CUDA graph where it can be captured (the row says so); each replay is
timed alone after a write of 256 MB that evicts the weights from L2, so decode rows read the weights from
HBM as a real model's layers do; the median of `--repeats` replays is reported.
Checks first: the MoE block built from a factorized dense FFN (compress.factorize.FactorizedMLP, the export's
renames) reproduces the dense FFN at k = E with a zero router, and every implementation matches an fp32
per-token loop over the chosen experts.
Usage: python -m benchmarks.factorize_gpu --json benchmarks/results/factorize-gpu-h200.json
       python -m benchmarks.factorize_gpu --tiny --json /tmp/tiny.json   # small shapes; CPU without CUDA
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from benchmarks._meta import meta

VARIANTS = [(4, 1), (4, 2), (16, 4)]  # (experts, top_k): 1R4E1K, 1R4E2K, fine-grained 16 experts top-4
TOKENS = [(1, 1), (16, 1), (8, 2048)]
IMPLEMENTATIONS = ["eager", "batched_mm", "grouped_mm", "compress"]  # compress: FactorizedMLP's own grouped path


def dense_mlp(hidden: int, intermediate: int, dtype, device):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    mlp = LlamaMLP(LlamaConfig(hidden_size=hidden, intermediate_size=intermediate)).to(device, dtype)
    for linear in (mlp.gate_proj, mlp.up_proj, mlp.down_proj):
        torch.nn.init.normal_(linear.weight, std=linear.in_features ** -0.5)
    return mlp.eval()


def moe_block(dense, experts: int, top_k: int, implementation: str, router_std: float = 1.0, fold=None):
    """transformers' Mixtral MoE block holding `dense` split into contiguous experts (the export's layout);
    implementation compress: the in-memory FactorizedMLP with the same weights instead."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    from compress.factorize.moe import FactorizedMLP
    from compress.factorize.split import split_neurons

    hidden, intermediate = dense.gate_proj.in_features, dense.gate_proj.out_features
    groups = split_neurons("contiguous", intermediate, experts).to(dense.gate_proj.weight.device)
    moe = FactorizedMLP.from_dense(dense.gate_proj, dense.up_proj, dense.down_proj, dense.act_fn, groups, top_k, fold)
    config = MixtralConfig(hidden_size=hidden, intermediate_size=intermediate // experts, num_local_experts=experts,
                           num_experts_per_tok=top_k, router_jitter_noise=0.0)
    config._experts_implementation = implementation
    block = MixtralSparseMoeBlock(config).to(moe.gate_up.device, moe.gate_up.dtype).eval()
    with torch.no_grad():
        block.experts.gate_up_proj.copy_(moe.gate_up)
        block.experts.down_proj.copy_(moe.down)
        block.gate.weight.normal_(std=router_std * hidden ** -0.5) if router_std else block.gate.weight.zero_()
        moe.router.weight.copy_(block.gate.weight)
    if implementation == "compress":
        moe.gate, moe.experts = block.gate, block.experts  # for loop_reference: the same tensors
        return moe.eval()
    return block


@torch.no_grad()
def loop_reference(block, x: torch.Tensor) -> torch.Tensor:
    """fp32, token by token: softmax, top-k, renormalise, Σ weight · expert (no transformers code path). The
    router logits are taken in the model's dtype, as Mixtral takes them, so near-ties route alike."""
    flat = x.reshape(-1, x.shape[-1]).float()
    gate_up, down = block.experts.gate_up_proj.float(), block.experts.down_proj.float()
    probs = torch.softmax((x.reshape(-1, x.shape[-1]) @ block.gate.weight.T).float(), -1)
    out = torch.zeros_like(flat)
    for t in range(flat.shape[0]):
        weights, chosen = probs[t].topk(block.top_k)
        for w, e in zip((weights / weights.sum()).tolist(), chosen.tolist()):
            g, u = (gate_up[e] @ flat[t]).chunk(2)
            out[t] += w * (down[e] @ (torch.nn.functional.silu(g) * u))
    return out.reshape(x.shape)


def _output(result):
    return result[0] if isinstance(result, tuple) else result


def time_forward(fn, x: torch.Tensor, repeats: int, flush: torch.Tensor | None) -> dict:
    """Median ms of one call; in a CUDA graph where capture works."""
    if x.device.type != "cuda":
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x)
            times.append((time.perf_counter() - start) * 1e3)
        return {"ms": statistics.median(times), "graph": False, "capture_error": None}
    graph, error = None, None
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn(x)
    torch.cuda.current_stream().wait_stream(stream)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # a forward that syncs with the host cannot be captured
    try:
        fn(x)
    except RuntimeError as exc:
        error = f"syncs with the host: {str(exc).splitlines()[0][:120]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    if error is None:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn(x)
    run = graph.replay if graph is not None else (lambda: fn(x))
    times = []
    for _ in range(repeats):
        flush.add_(1)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return {"ms": statistics.median(times), "graph": graph is not None, "capture_error": error}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", required=True)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    run_meta = meta()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    hidden, intermediate = (64, 256) if args.tiny else (4096, 11008)
    tokens = [(1, 1), (2, 8)] if args.tiny else TOKENS
    repeats = 3 if args.tiny else args.repeats
    torch.manual_seed(0)
    dense = dense_mlp(hidden, intermediate, dtype, device)
    flush = torch.zeros(64 * 2**20, device=device, dtype=torch.float32) if device == "cuda" else None
    result = {"meta": run_meta, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
              "dtype": str(dtype).replace("torch.", ""), "hidden": hidden, "intermediate": intermediate,
              "checks": [], "rows": []}

    x = torch.randn(1, 64, hidden, device=device, dtype=dtype)
    with torch.no_grad():
        want = dense(x).float()
        for experts in (4, 16):
            whole = moe_block(dense, experts, experts, "eager", router_std=0.0)
            got = _output(whole(x)).float()
            result["checks"].append({"check": f"k=E={experts}, zero router == dense FFN",
                                     "relative_error": ((got - want).norm() / want.norm()).item()})
        for experts, top_k in VARIANTS:
            for implementation in IMPLEMENTATIONS:
                block = moe_block(dense, experts, top_k, implementation)
                try:
                    got = _output(block(x)).float()
                except Exception as exc:
                    result["checks"].append({"check": f"{experts}E top-{top_k} {implementation}", "error": str(exc)[:200]})
                    continue
                ref = loop_reference(block, x)
                result["checks"].append({"check": f"{experts}E top-{top_k} {implementation} == fp32 loop",
                                         "relative_error": ((got - ref).norm() / ref.norm()).item()})
    for check in result["checks"]:
        print(json.dumps(check), flush=True)

    with torch.no_grad():
        for batch, length in tokens:
            x = torch.randn(batch, length, hidden, device=device, dtype=dtype)
            dense_time = time_forward(dense, x, repeats, flush)
            base = {"batch": batch, "tokens": length, "dense_ms": dense_time["ms"]}
            print(json.dumps(base), flush=True)
            for experts, top_k in VARIANTS:
                for implementation in IMPLEMENTATIONS:
                    block = moe_block(dense, experts, top_k, implementation)
                    row = {**base, "experts": experts, "top_k": top_k, "implementation": implementation,
                           "error": None}
                    try:
                        timed = time_forward(lambda h: _output(block(h)), x, repeats, flush)
                    except Exception as exc:
                        row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                    else:
                        row.update(moe_ms=timed["ms"], graph=timed["graph"], capture_error=timed["capture_error"],
                                   speedup=dense_time["ms"] / timed["ms"])
                    result["rows"].append(row)
                    print(json.dumps(row), flush=True)
                    del block
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
