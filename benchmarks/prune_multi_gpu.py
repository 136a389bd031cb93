"""Prune a random Llama spread over several GPUs by accelerate (Wanda 2:4), evaluate it, report time and memory.

Usage (2+ GPUs; the default shape is Llama-2-70B, about 129 GiB in bfloat16, more than one H200 holds
with calibration activations):
    python -m benchmarks.prune_multi_gpu --json multi_gpu.json
    python -m benchmarks.prune_multi_gpu --layers 32 --hidden 4096 --intermediate 11008 --kv-heads 32 \
        --max-memory 0=8GiB,1=8GiB,cpu=64GiB      # 7B forced across 2 GPUs and CPU memory
    python -m benchmarks.prune_multi_gpu --tiny   # CPU check: tiny model, half its layers offloaded to disk

The weights are made directly where the device map puts them (no checkpoint on disk, no whole copy in
CPU memory), then `accelerate.dispatch_model` hooks them up as `from_pretrained(device_map=...)` would.
Prints one JSON object: wall times, per-GPU peak memory, the map, sparsity, perplexity on random tokens.
"""
from __future__ import annotations

import os

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # keep NVLink multicast off on these hosts

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from benchmarks._compat import prune_config  # noqa: E402
from benchmarks._meta import meta  # noqa: E402


def build_config(args):
    from transformers import LlamaConfig

    if args.tiny:
        args.layers, args.hidden, args.intermediate, args.heads, args.kv_heads, args.vocab = 4, 64, 128, 4, 2, 320
    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.intermediate, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
                         max_position_embeddings=4096, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    return config


def plan(model, args, dtype) -> dict:
    """The device map: on --tiny, first half of the layers in CPU memory and the rest on disk; else accelerate's."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    from compress.model.placement import parse_max_memory

    if args.tiny:
        half = args.layers // 2
        return {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.norm": "cpu", "lm_head": "disk",
                **{f"model.layers.{i}": "cpu" if i < half else "disk" for i in range(args.layers)}}
    no_split = model._no_split_modules
    max_memory = parse_max_memory(args.max_memory)
    if max_memory is None:
        max_memory = get_balanced_memory(model, no_split_module_classes=no_split, dtype=dtype)
    return infer_auto_device_map(model, max_memory=max_memory, no_split_module_classes=no_split, dtype=dtype)


def _device_of(name: str, device_map: dict):
    prefix = max((k for k in device_map if k == "" or name == k or name.startswith(k + ".")), key=len)
    return device_map[prefix]


def random_dispatched_llama(args, dtype, offload_dir):
    from accelerate import dispatch_model
    from accelerate.utils import set_module_tensor_to_device
    from transformers import LlamaForCausalLM

    config = build_config(args)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    device_map = plan(model, args, dtype)
    maker = "cuda" if torch.cuda.is_available() else "cpu"  # random numbers are fast on a GPU
    generator = torch.Generator(device=maker).manual_seed(0)
    for name, param in model.named_parameters():
        where = _device_of(name, device_map)
        home = "cpu" if where == "disk" else where
        if "norm" in name:
            value = torch.ones(param.shape, dtype=dtype)
        else:
            value = (torch.randn(param.shape, device=maker, generator=generator) * 0.02).to(dtype)
        set_module_tensor_to_device(model, name, home, value=value)
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config).to(
        "cpu" if _device_of("model.rotary_emb", device_map) == "disk" else _device_of("model.rotary_emb", device_map))
    model.eval()
    model.config.use_cache = False
    dispatch_model(model, device_map=device_map, offload_dir=offload_dir, force_hooks=True)
    return model, device_map


def main() -> None:
    from compress.evaluate import perplexity
    from compress.model.placement import main_device
    from compress.prune.apply import prune_model

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU, half its layers on disk")
    parser.add_argument("--layers", type=int, default=80)
    parser.add_argument("--hidden", type=int, default=8192)
    parser.add_argument("--intermediate", type=int, default=28672)
    parser.add_argument("--heads", type=int, default=64)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--max-memory", default=None, help="e.g. 0=70GiB,1=70GiB,cpu=200GiB (default: balanced over the GPUs)")
    parser.add_argument("--method", default="wanda")
    parser.add_argument("--pattern", default="2:4")
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--eval-tokens", type=int, default=32768)
    parser.add_argument("--eval-context", type=int, default=2048)
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args()
    run_meta = meta()
    if args.tiny:
        args.dtype, args.nsamples, args.seqlen, args.eval_tokens, args.eval_context = "float32", 8, 64, 1024, 128
    dtype = getattr(torch, args.dtype)
    gpus = torch.cuda.device_count()

    with tempfile.TemporaryDirectory(prefix="compress-offload-") as offload_dir:
        started = time.perf_counter()
        model, device_map = random_dispatched_llama(args, dtype, offload_dir)
        build_s = time.perf_counter() - started
        device = main_device(model, "cpu")
        vocab = model.config.vocab_size
        calib = torch.randint(0, vocab, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0))
        held_out = torch.randint(0, vocab, (args.eval_tokens,), generator=torch.Generator().manual_seed(1))
        for gpu in range(gpus):
            torch.cuda.reset_peak_memory_stats(gpu)
        t0 = time.perf_counter()
        result = prune_model(model, prune_config(args.method, args.pattern), calib, device)
        _synchronize(gpus)
        prune_s = time.perf_counter() - t0
        prune_peaks = [torch.cuda.max_memory_allocated(gpu) for gpu in range(gpus)]
        for gpu in range(gpus):
            torch.cuda.reset_peak_memory_stats(gpu)
        ppl = perplexity(model, held_out, args.eval_context, device)
        _synchronize(gpus)
        eval_peaks = [torch.cuda.max_memory_allocated(gpu) for gpu in range(gpus)]

    size = sum(p.numel() for p in model.parameters()) * dtype.itemsize
    placed = {}
    for where in device_map.values():
        placed[str(where)] = placed.get(str(where), 0) + 1
    report = {
        "meta": run_meta, "shape": {"layers": args.layers, "hidden": args.hidden, "intermediate": args.intermediate,
                  "heads": args.heads, "kv_heads": args.kv_heads, "vocab": args.vocab, "dtype": args.dtype},
        "model_gib": round(size / 2**30, 2), "modules_per_device": placed, "main_device": str(device),
        "method": args.method, "pattern": args.pattern, "tokens": args.nsamples * args.seqlen,
        "build_s": round(build_s, 2), "prune_s": round(prune_s, 2), "capture_s": round(result.capture_seconds, 2),
        "eval_s": round(ppl.seconds, 2), "perplexity": ppl.perplexity, "sparsity": round(result.overall_sparsity, 4),
        "mean_rel_error": sum(s.relative_error for s in result.steps) / len(result.steps),
        "prune_peak_gib_per_gpu": [round(b / 2**30, 2) for b in prune_peaks],
        "eval_peak_gib_per_gpu": [round(b / 2**30, 2) for b in eval_peaks],
        "gpus": [torch.cuda.get_device_name(i) for i in range(gpus)], "torch": torch.__version__,
        "nccl_nvls_enable": os.environ["NCCL_NVLS_ENABLE"],
    }
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


def _synchronize(gpus: int) -> None:
    for gpu in range(gpus):
        torch.cuda.synchronize(gpu)


if __name__ == "__main__":
    main()
