"""Prune a randomly initialised 7B-shape Llama on one GPU and report wall time and peak GPU memory.

Usage: python -m benchmarks.prune_7b [--methods wanda sparsegpt] [--nsamples 128] [--seqlen 2048] [--json out.json]
       python -m benchmarks.prune_7b --tiny --json /tmp/tiny.json   # tiny shape on the CPU: a quick check
Random weights are fine for timing; the model lives in CPU memory and one layer at a time is on the GPU.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks._compat import prune_config
from benchmarks._meta import meta


def random_llama(layers: int, hidden: int, intermediate: int, dtype=torch.bfloat16, device: str = "cpu", vocab: int = 32000):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=hidden // 128, num_key_value_heads=hidden // 128,
                         vocab_size=vocab, max_position_embeddings=4096)
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.to_empty(device=device)
    maker = "cuda" if torch.cuda.is_available() else "cpu"  # random numbers are fast on a GPU
    generator = torch.Generator(device=maker).manual_seed(0)
    for name, param in model.named_parameters():
        if "norm" in name:
            param.data = torch.ones(param.shape, dtype=dtype, device=device)
        else:
            fresh = torch.randn(param.shape, device=maker, dtype=torch.float32, generator=generator) * 0.02
            param.data = fresh.to(dtype).to(device)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config).to(device)  # to_empty left its buffers empty
    return model.eval().to(dtype)


def main() -> None:
    from compress.prune.apply import prune_model

    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", nargs="+", default=["wanda", "sparsegpt"])
    parser.add_argument("--pattern", default="2:4")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=11008)
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--calib-batch", type=int, default=0)
    parser.add_argument("--permute", nargs="+", default=["none"])
    parser.add_argument("--perm-blocks", type=int, default=8)
    parser.add_argument("--perm-steps", type=int, default=100)
    parser.add_argument("--perm-model-steps", type=int, default=30, help="--permute global: model pass steps")
    parser.add_argument("--perm-windows", type=int, default=2, help="--permute global: windows per model step")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="2 layers, hidden 256, 4 x 32 tokens, on the CPU")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.tiny:
        args.layers, args.hidden, args.intermediate, args.nsamples, args.seqlen, args.device = 2, 256, 512, 4, 32, "cpu"
        args.methods, args.permute, args.perm_model_steps, vocab = ["wanda"], ["none", "global"], 2, 320
    else:
        vocab = 32000
    run_meta = meta()
    cuda = args.device.startswith("cuda")

    started = time.perf_counter()
    model = random_llama(args.layers, args.hidden, args.intermediate, torch.float32 if args.tiny else torch.bfloat16,
                         vocab=vocab)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"built {size / 2**30:.1f} GiB random Llama in {time.perf_counter() - started:.1f} s", flush=True)
    ids = torch.randint(0, vocab, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0))
    original = {k: v.clone() for k, v in model.state_dict().items()}
    rows = []
    for method, permute in [(m, p) for m in args.methods for p in args.permute]:
        model.load_state_dict(original)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        config = prune_config(method, args.pattern, calib_batch=args.calib_batch, permute=permute,
                              perm_blocks=args.perm_blocks, perm_steps=args.perm_steps,
                              **({"perm_model_steps": args.perm_model_steps, "perm_windows": args.perm_windows}
                                 if permute == "global" else {}))
        result = prune_model(model, config, ids, args.device)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() if cuda else None
        per_layer = sorted(s.seconds for s in result.steps)
        phases = {}
        for step in result.steps:
            for phase, seconds in step.info["phase_seconds"].items():
                phases[phase] = round(phases.get(phase, 0.0) + seconds, 2)
        row = {"method": method, "pattern": args.pattern, "permute": permute, "layers": args.layers, "wall_s": round(wall, 2),
               "capture_s": round(result.capture_seconds, 2), "median_layer_s": round(per_layer[len(per_layer) // 2], 3),
               "peak_gpu_gib": None if peak is None else round(peak / 2**30, 2), "model_gib": round(size / 2**30, 2),
               "phases_s": phases, "sparsity": round(result.overall_sparsity, 4),
               "mean_rel_error": round(sum(s.relative_error for s in result.steps) / len(result.steps), 5)}
        if result.model_pass is not None:
            row["model_pass"] = {k: result.model_pass[k] for k in ("steps", "windows", "seconds", "objective_start",
                                                                   "objective_learned", "kept", "seconds_per_step")}
        rows.append(row)
        print(json.dumps(row), flush=True)
    settings = {"tokens": args.nsamples * args.seqlen, "nsamples": args.nsamples, "seqlen": args.seqlen,
                "calib_batch": args.calib_batch, "hidden": args.hidden, "intermediate": args.intermediate}
    print(json.dumps(settings))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": {**run_meta, **settings}, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
