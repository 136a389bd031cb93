"""End-to-end decode tokens/s of the default model's architecture (SmolLM2-135M: 30 layers, 9 query heads on 3
KV heads of 64 channels) with Double Sparsity inside the model's own forward (compress/attention/decoding/generate.py:
the attention-function registry, no model code patched), against dense SDPA decode, on a GPU.

The checkpoint is not needed: the model is built from the architecture below with random weights (timing
does not depend on the weights; contexts past the trained 8K are for timing only, quality there is not
measured). Per (dtype, batch, context n): the KV cache of every layer holds n − 1 random tokens (never zeros)
and the label cache of the sparse layers their 4-bit labels; one decode step (the new token at position
n − 1: projections, RoPE, label append, attention, MLPs, logits) is captured as one CUDA graph and replayed
(median of 5 × 20 replays after warm-up), in three modes: dense (SDPA over the whole cache in every layer),
Double Sparsity (the package's default setting, T = n/16) and attention skipped (zeros:
the rest of the step), so attention's share of the step shows why the end-to-end speedup stays below the
kernels'. tokens/s = batch / step time. Then a short greedy generation through the same path, checked
against dense decoding (T ≥ context) and against the evaluation mode (compress/attention/evaluation/runtime.py).
Usage: python -m benchmarks.attention_decode --json benchmarks/results/attention-decode-h200.json
       python -m benchmarks.attention_decode --tiny --json /tmp/tiny.json   # tiny model; the CPU runs the
                                                                            # PyTorch path, timed by the clock
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from benchmarks._meta import meta

# the default model's config.json (compress/defaults: SmolLM2-135M-Instruct), architecture fields only
ARCHITECTURE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                    rms_norm_eps=1e-5, rope_parameters={"rope_theta": 100000.0, "rope_type": "default"},
                    tie_word_embeddings=True, hidden_act="silu")
TINY = dict(ARCHITECTURE, vocab_size=320, hidden_size=72, intermediate_size=128, num_hidden_layers=3,
            max_position_embeddings=512)
SETTINGS = dict(tokens="1/16")  # else the package's default setting (compress.attention.defaults), recorded


def build_model(architecture: dict, dtype, device, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**architecture)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).eval().to(device, dtype)


def fill_random(decoder, layers: int, batch: int, kv_heads: int, length: int, head_dim: int, dtype, device) -> None:
    """Every layer's KV cache: `length` random tokens (and their labels), room for one more."""
    decoder.stores.clear()
    decoder.capacity = length + 1
    generator = torch.Generator(device=device).manual_seed(length)
    for layer in range(layers):
        shape = (batch, kv_heads, length, head_dim)
        decoder.append(layer, torch.randn(shape, device=device, dtype=dtype, generator=generator),
                       torch.randn(shape, device=device, dtype=dtype, generator=generator))


def timed_ms(step, cuda: bool) -> tuple[float, bool]:
    """(median ms of one step, captured as a CUDA graph); eager CUDA-event or clock timing if capture fails."""
    if cuda:
        from compress.attention.decode_kernels.bench import _graph_time

        try:
            return _graph_time(step), True
        except Exception as error:  # noqa: BLE001 (record it and time eagerly)
            print(f"  graph capture failed ({str(error).splitlines()[0][:120]}): timing eagerly", flush=True)
            torch.cuda.synchronize()
    for _ in range(3):
        step()
    times = []
    for _ in range(5):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            began = time.perf_counter()
            step()
            times.append(1e3 * (time.perf_counter() - began))
    return statistics.median(times), False


@torch.no_grad()
def time_step(model, decoder, batch: int, context: int, dtype, device) -> dict:
    from compress.attention.decoding.generate import installed, step_inputs

    config = model.config
    fill_random(decoder, config.num_hidden_layers, batch, config.num_key_value_heads, context - 1, config.head_dim,
                dtype, device)
    ids = torch.randint(0, config.vocab_size, (batch, 1), device=device)
    inputs = step_inputs(batch, context - 1, device)

    def step():
        decoder.rewind(context - 1)  # Python state only: every replay writes the same position
        return model(input_ids=ids, **inputs).logits

    ms, graphs = {}, []
    with installed(model, decoder):
        for mode in ("dense", "sparse", "skip"):
            decoder.mode = mode
            ms[mode], graph = timed_ms(step, device.type == "cuda")
            graphs.append(graph)
    decoder.mode = "sparse"
    decoder.stores.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    dense_attention, sparse_attention = ms["dense"] - ms["skip"], ms["sparse"] - ms["skip"]
    kv_bytes = 2 * config.num_hidden_layers * batch * config.num_key_value_heads * context * config.head_dim * \
        torch.finfo(dtype).bits // 8
    return {"dtype": str(dtype).replace("torch.", ""), "batch": batch, "context": context,
            "budget": decoder.budget(context), "graph": all(graphs), "kv_cache_gib": kv_bytes / 2 ** 30,
            "dense_ms": ms["dense"], "sparse_ms": ms["sparse"], "skip_attention_ms": ms["skip"],
            "dense_tokens_per_s": 1e3 * batch / ms["dense"], "sparse_tokens_per_s": 1e3 * batch / ms["sparse"],
            "speedup": ms["dense"] / ms["sparse"], "dense_attention_ms": dense_attention,
            "sparse_attention_ms": sparse_attention, "attention_share_dense": dense_attention / ms["dense"],
            "attention_speedup": dense_attention / sparse_attention if sparse_attention > 0 else None}


def generation_checks(model, settings_for, prompt_length: int, batches: list[int], new_tokens: int) -> list[dict]:
    from compress.attention.decoding.generate_check import compare_decoding

    rows = []
    for batch in batches:
        for bits, selection in ((4, "threshold"), (16, "topk")):
            prompt = torch.randint(0, model.config.vocab_size, (batch, prompt_length), device=model.device)
            began = time.perf_counter()
            row = compare_decoding(model, prompt, new_tokens, settings_for(bits), selection)
            seconds = time.perf_counter() - began
            sparse_layers = model.config.num_hidden_layers - settings_for(bits).dense_layers
            rows.append({**row, "dtype": str(model.dtype).replace("torch.", ""), "seconds": seconds,
                         "failed": failed(row, sparse_layers)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def failed(row: dict, sparse_layers: int) -> list[str]:
    """The test suite's rules (compress.attention.decoding.generate_check.failed_rules) this row breaks."""
    from compress.attention.decoding.generate_check import failed_rules

    return failed_rules(row, sparse_layers)


def main() -> None:
    from compress.attention.config import DoubleSparsity
    from compress.attention.decoding.generate import decoder_from_settings
    from compress.attention.decoding.generate_check import appended_labels_exact, host_syncs, random_channel_file

    parser = argparse.ArgumentParser()
    parser.add_argument("--json", required=True)
    parser.add_argument("--contexts", type=int, nargs="*", default=[8192, 16384, 32768, 65536])
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 16])
    parser.add_argument("--dtypes", nargs="*", default=["float16", "bfloat16"],
                        help="the grid in the first; the others at the largest batch and context")
    parser.add_argument("--prompt", type=int, default=1024, help="prompt tokens of the generation checks")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    run_meta = meta()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    architecture = TINY if args.tiny else ARCHITECTURE
    if args.tiny:
        args.contexts, args.batches, args.dtypes, args.prompt, args.new_tokens = [64, 160], [1, 2], ["float16"], 48, 6
    began = time.perf_counter()
    append_exact = all(appended_labels_exact("cuda")) if cuda else None  # the label-append kernel (CUDA only)
    print(f"label append kernel bit-equal to label_cache: {append_exact}", flush=True)
    rows, generation, syncs = [], [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for index, name in enumerate(args.dtypes):
            dtype = getattr(torch, name)
            model = build_model(architecture, dtype, device)
            channel_file = random_channel_file(model, f"{tmp}/channels.json", prior=True, projection=True)

            def settings_for(bits: int, path=str(channel_file)) -> DoubleSparsity:
                return DoubleSparsity(channel_file=path, **{**SETTINGS, "label_bits": bits})

            decoder = decoder_from_settings(model, settings_for(4))  # T = 1/16 of each step's context
            used = settings_for(4).model_dump(exclude={"channel_file", "sink", "recent", "mode"})
            if index == 0:  # what would keep a step out of a CUDA graph: host reads of tensor values
                syncs = host_syncs(model, decoder, 2, min(args.contexts))
                print(f"host reads of tensor values in one decode step, per mode: {syncs}", flush=True)
            grid = [(b, n) for b in args.batches for n in args.contexts] if index == 0 else \
                [(max(args.batches), max(args.contexts))]
            for batch, context in grid:
                row = time_step(model, decoder, batch, context, dtype, device)
                rows.append(row)
                print(f"[{time.perf_counter() - began:6.0f} s] {json.dumps(row)}", flush=True)
            if index == 0:
                print("generation checks (random weights: agreement says nothing about quality)", flush=True)
                generation = generation_checks(model, settings_for, args.prompt, [1] if args.tiny else [1, 2],
                                              args.new_tokens)
            del model, decoder
    result = {"meta": run_meta, "device": torch.cuda.get_device_name() if cuda else "cpu",
              "model": {"architecture": architecture, "weights": "random (the architecture of the default model, "
                        "SmolLM2-135M-Instruct; its checkpoint is not loaded)" if not args.tiny else "random (tiny)"},
              "settings": {**used, "selection": "threshold", "budget": "1/16 of the step's context",
                           "label_append": "one Triton launch per sparse layer and step writes the key, the value and "
                                           "the labels (compress/attention/decode_kernels/append.py: append_token)"},
              "rows": rows, "generation": generation,
              "checks": {"generation_passed": sum(not r["failed"] for r in generation),
                         "generation_rules": "the test suite's (generate_check.failed_rules)", "generation_total": len(generation),
                         "append_labels_exact": append_exact, "host_syncs_per_step": syncs}}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"{'dtype':<9}{'B':>3}{'context':>8}{'dense ms':>10}{'sparse ms':>10}{'rest ms':>9}{'dense tok/s':>12}"
          f"{'sparse tok/s':>13}{'speedup':>8}{'attn share':>11}{'attn speedup':>13}{'graph':>6}")
    for r in rows:
        attention = "n/a" if r["attention_speedup"] is None else f"{r['attention_speedup']:.2f}"
        print(f"{r['dtype']:<9}{r['batch']:>3}{r['context']:>8}{r['dense_ms']:>10.3f}{r['sparse_ms']:>10.3f}"
              f"{r['skip_attention_ms']:>9.3f}{r['dense_tokens_per_s']:>12.0f}{r['sparse_tokens_per_s']:>13.0f}"
              f"{r['speedup']:>8.2f}{r['attention_share_dense']:>11.2f}{attention:>13}{str(r['graph']):>6}")
    print(f"generation checks: {result['checks']['generation_passed']} of {len(generation)} passed; "
          f"{time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
