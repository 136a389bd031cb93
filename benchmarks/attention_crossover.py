"""Where Double Sparsity decoding pays, measured: the crossover table of the dense rule
(compress/attention/decoding/dense_rule.py) for this GPU, and the whole decode step re-measured under it.

The default model's architecture (30 layers, 9 query heads on 3 KV heads of 64 channels, random weights, as
benchmarks/attention_decode.py builds it), float16, the package's default Double Sparsity setting
(compress.attention.config; recorded in the result) at T = 1/16 of each step's context, threshold select, a
random channel file (with a position prior and projected labels, so any default runs). Per (batch, context n): every
layer's KV cache holds n − 1 random tokens and one decode step is captured as a CUDA graph per mode; the
modes' graphs are replayed in turn (blocks of 20 replays, the order alternating, median of the blocks), so
drift hits every mode alike.
  0. append_token (a sparse step's key, value and labels in one launch) against the separate writes; if it
     differs, the run uses the separate writes;
  1. the grid (batch 1, 4, 16 × context 4K–128K): dense vs sparse (every step sparse; at batch 1 and 16 also
     without the one-launch append, key sparse_unfused_ms); the crossover of each
     batch × KV heads is the smallest context from which sparse was faster by the margin at every larger
     context measured (dense_rule.crossovers);
  2. batch 1 and 16 over the same contexts: dense vs the rule (the crossovers just measured): each step
     sparse or dense as the rule says; every row should be ≥ 1.0× (a row the rule keeps dense runs the same
     graph as dense: its ratio is the timing noise);
  3. the path of stock `model.generate` (eager, no graph) over a smaller grid: transformers' DynamicCache vs
     DoubleSparseCache kept dense vs DoubleSparseCache sparse at every step; the eager crossovers (what
     DoubleSparseCache reads by default) from the last two, and the step each row takes under them.
Usage: python -m benchmarks.attention_crossover --json benchmarks/results/attention-crossover-h100.json
       python -m benchmarks.attention_crossover --store benchmarks/results/attention-crossover-h100.json
           (writes that run's crossovers into compress/attention/decoding/dense_rule.json, keyed by its GPU)
       python -m benchmarks.attention_crossover --tiny --json /tmp/tiny.json   # CPU (the PyTorch path, or
           Triton's interpreter with TRITON_INTERPRET=1), timed by the clock: a check that it runs
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import torch

from benchmarks._meta import meta
from benchmarks.attention_decode import ARCHITECTURE, TINY, build_model, fill_random

MARGIN = 1.05  # sparse must be this much faster for its crossover
BLOCK, ROUNDS = 20, 11  # replays per timed block, blocks per mode


def _capture(step):
    """`step` as a CUDA graph (warmed up outside the capture), or None if capture fails."""
    from compress.kernels.graphs import capture

    try:
        graph = capture(step)[0]
    except Exception as error:  # noqa: BLE001 (recorded; timed eagerly)
        print(f"  graph capture failed ({str(error).splitlines()[0][:120]}): timing eagerly", flush=True)
        torch.cuda.synchronize()
        return None
    graph.replay()
    torch.cuda.synchronize()
    return graph


def interleaved_ms(steps: dict, prepare, cuda: bool, block: int = BLOCK, rounds: int = ROUNDS,
                   synchronize: bool = False) -> tuple[dict, bool]:
    """({mode: median ms of one step}, all graphed): each mode's step captured (`cuda`; `prepare(mode)` sets
    the decoder first), then blocks of `block` replays of each mode in turn, the order reversed every round.
    Without `cuda` the steps run eagerly, timed by the clock (`synchronize`: waiting for the GPU)."""
    runners, graphed = {}, True
    for mode, step in steps.items():
        prepare(mode)
        graph = _capture(step) if cuda else None
        graphed &= graph is not None
        if graph is None:
            for _ in range(2):
                step()
        runners[mode] = graph.replay if graph is not None else (lambda mode=mode, step=step: (prepare(mode), step()))
    times = {mode: [] for mode in steps}
    order = list(steps)
    for round_ in range(rounds):
        for mode in (order if round_ % 2 == 0 else order[::-1]):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(block):
                    runners[mode]()
                end.record()
                torch.cuda.synchronize()
                times[mode].append(start.elapsed_time(end) / block)
            else:
                if synchronize:
                    torch.cuda.synchronize()
                began = time.perf_counter()
                for _ in range(block):
                    runners[mode]()
                if synchronize:
                    torch.cuda.synchronize()
                times[mode].append(1e3 * (time.perf_counter() - began) / block)
    return {mode: statistics.median(t) for mode, t in times.items()}, graphed


@torch.no_grad()
def time_modes(model, decoder, batch: int, context: int, modes: dict, device) -> dict:
    """Median ms of one decode step after context − 1 cached tokens per mode; `modes` {name: (decoder mode,
    rule, fused append)}."""
    from compress.attention.decoding.generate import installed, step_inputs

    config = model.config
    decoder.mode, decoder.rule, fused = "sparse", None, decoder.fused
    fill_random(decoder, config.num_hidden_layers, batch, config.num_key_value_heads, context - 1, config.head_dim,
                model.dtype, device)
    ids = torch.randint(0, config.vocab_size, (batch, 1), device=device)
    inputs = step_inputs(batch, context - 1, device)

    def step():
        decoder.rewind(context - 1)  # Python state only: every replay writes the same position
        return model(input_ids=ids, **inputs).logits

    def prepare(name):
        decoder.mode, decoder.rule, decoder.fused = modes[name]
        decoder.fused &= fused

    with installed(model, decoder):
        ms, graphed = interleaved_ms({name: step for name in modes}, prepare, device.type == "cuda",
                                     *((2, 3) if device.type == "cpu" else ()))
    decoder.mode, decoder.rule, decoder.fused = "sparse", None, fused
    decoder.stores.clear()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"batch": batch, "context": context, "rows": batch * config.num_key_value_heads,
            "budget": decoder.budget(context), "graph": graphed, **{f"{name}_ms": v for name, v in ms.items()}}


def guarded(measure, batch: int, context: int, decoder, fused: bool) -> dict:
    """measure(), or a row naming its error (out of memory, say): the other points still run."""
    try:
        return measure()
    except Exception as error:  # noqa: BLE001 (recorded in the row)
        print(f"  batch {batch}, context {context} failed: {type(error).__name__}: {str(error)[:200]}", flush=True)
        decoder.mode, decoder.rule, decoder.fused = "sparse", None, fused
        decoder.stores.clear()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        return {"batch": batch, "context": context, "error": f"{type(error).__name__}: {error}"[:300]}


def _fill_cache(cache, layers: int, batch: int, kv_heads: int, length: int, head_dim: int, dtype, device) -> None:
    generator = torch.Generator(device=device).manual_seed(length)
    for layer in range(layers):
        shape = (batch, kv_heads, length, head_dim)
        cache.update(torch.randn(shape, device=device, dtype=dtype, generator=generator),
                     torch.randn(shape, device=device, dtype=dtype, generator=generator), layer)


@torch.no_grad()
def time_generate_path(model, settings, batch: int, context: int, device) -> dict:
    """Eager decode steps as stock `model.generate` runs them (no CUDA graph), after context − 1 random cached
    tokens: transformers' DynamicCache (dense, concatenating every step) vs DoubleSparseCache kept dense (its
    buffers, no labels) vs DoubleSparseCache sparse at every step; each step is cropped off again, modes in
    turn."""
    from transformers import DynamicCache

    from compress.attention.decoding.cache import DoubleSparseCache
    from compress.attention.decoding.dense_rule import DenseRule
    from compress.attention.evaluation.measure import _cache_argument

    config = model.config
    never = DenseRule("never", {1: None})
    caches = {"stock": DynamicCache(config=config), "cache_dense": DoubleSparseCache(model, settings, dense_rule=never),
              "cache_sparse": DoubleSparseCache(model, settings, dense_rule=None)}
    for cache in caches.values():
        _fill_cache(cache, config.num_hidden_layers, batch, config.num_key_value_heads, context - 1, config.head_dim,
                    model.dtype, device)
    ids = torch.randint(0, config.vocab_size, (batch, 1), device=device)
    argument = _cache_argument(model)

    def step(cache):
        model(input_ids=ids, use_cache=True, **{argument: cache})
        cache.crop(-1)

    steps = {name: (lambda cache=cache: step(cache)) for name, cache in caches.items()}
    ms, _ = interleaved_ms(steps, lambda name: None, False, *((5, 5) if device.type == "cuda" else (1, 2)),
                           synchronize=device.type == "cuda")
    sparse_steps = caches["cache_sparse"].steps
    del caches
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"batch": batch, "context": context, "rows": batch * config.num_key_value_heads,
            **{f"{name}_ms": v for name, v in ms.items()}, "sparse_ran": sparse_steps > 0}


def eager_rows(model, settings, points, device, margin: float, name: str, began: float) -> tuple[list, dict]:
    """The eager grid (time_generate_path at each (batch, context) of `points`), the eager crossovers, and per
    row the step the eager rule takes and its speedups."""
    from compress.attention.decoding.dense_rule import crossovers

    rows = []
    for batch, context in points:
        try:
            row = time_generate_path(model, settings, batch, context, device)
        except Exception as error:  # noqa: BLE001 (recorded: the graphed rows stand without it)
            row = {"batch": batch, "context": context, "error": f"{type(error).__name__}: {error}"[:300]}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        print(f"[{time.perf_counter() - began:5.0f} s] generate path: {json.dumps(row)}", flush=True)
    heads = model.config.num_key_value_heads
    timed = [{"rows": r["batch"] * heads, "context": r["context"], "dense_ms": 0.0, "sparse_ms": 1.0} if "error" in r
             else {**r, "dense_ms": r["cache_dense_ms"], "sparse_ms": r["cache_sparse_ms"]} for r in rows]
    eager = crossovers(timed, margin)
    from compress.attention.decoding.dense_rule import DenseRule

    rule = DenseRule(f"{name} (eager)", eager, model.config.head_dim)
    for r in rows:
        if "error" not in r:
            r["rule_sparse"] = rule.sparse(r["batch"], r["context"], heads, model.config.head_dim)
            r["cache_rule_ms"] = r["cache_sparse_ms"] if r["rule_sparse"] else r["cache_dense_ms"]
            r["speedup_vs_stock"] = r["stock_ms"] / r["cache_rule_ms"]
            r["speedup_vs_cache_dense"] = r["cache_dense_ms"] / r["cache_rule_ms"]
    return rows, rule.as_json()


def _partial(args, **found) -> None:
    """What the run has found so far, written where the result goes (replaced by the whole result at the end)."""
    with open(args.json, "w") as f:
        json.dump({"partial": True, **found}, f, indent=2)


def run(args) -> dict:
    from compress.attention.config import DoubleSparsity
    from compress.attention.decoding.dense_rule import DenseRule, crossovers
    from compress.attention.decoding.generate import decoder_from_settings, kernels_available
    from compress.attention.decoding.generate_check import appended_tokens_match, random_channel_file

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    name = torch.cuda.get_device_name() if cuda else "cpu"
    architecture = TINY if args.tiny else ARCHITECTURE
    began = time.perf_counter()
    model = build_model(architecture, torch.float16, device)
    grid, checked = [], []
    with tempfile.TemporaryDirectory() as tmp:
        # the package's default setting (labels, channels, bits, prior), T = 1/16 of each step's context
        path = random_channel_file(model, f"{tmp}/channels.json", prior=True, projection=True)
        settings = DoubleSparsity(channel_file=str(path), tokens="1/16")
        used = settings.model_dump(exclude={"channel_file", "sink", "recent", "mode"})
        print(f"setting: {used}", flush=True)
        decoder = decoder_from_settings(model, settings)  # T = 1/16 of each step's context
        # the one-launch key, value and label append (where the kernels run)
        try:
            fused = appended_tokens_match(device.type) if kernels_available(torch.empty(0, device=device)) else {}
        except Exception as error:  # noqa: BLE001 (recorded; the run goes on with the separate writes)
            fused = {"error": f"{type(error).__name__}: {error}"[:300]}
        decoder.fused = all(v is True for v in fused.values())
        print(f"one-launch append (append_token) matches: {fused}", flush=True)
        print(f"{name}: grid, dense vs sparse (every step), batches {args.batches} x contexts {args.contexts}",
              flush=True)
        for batch in args.batches:
            for context in args.contexts:
                modes = {"dense": ("dense", None, True), "sparse": ("sparse", None, True)}
                if batch in args.unfused_batches:  # the same without the one-launch append
                    modes["sparse_unfused"] = ("sparse", None, False)
                row = guarded(lambda: time_modes(model, decoder, batch, context, modes, device), batch, context,
                              decoder, decoder.fused)
                if "error" not in row:
                    row["speedup"] = row["dense_ms"] / row["sparse_ms"]
                    if "sparse_unfused_ms" in row:
                        row["unfused_speedup"] = row["dense_ms"] / row["sparse_unfused_ms"]
                    sparse_layers = architecture["num_hidden_layers"] - settings.dense_layers
                    row["per_layer_gain_us"] = 1e3 * (row["dense_ms"] - row["sparse_ms"]) / sparse_layers
                grid.append(row)
                print(f"[{time.perf_counter() - began:5.0f} s] {json.dumps(row)}", flush=True)
        timed = [{**r, "rows": r["batch"] * architecture["num_key_value_heads"], "dense_ms": 0.0, "sparse_ms": 1.0}
                 if "error" in r else r for r in grid]  # a point that failed counts as sparse losing
        rule = DenseRule(name, crossovers(timed, args.margin), architecture["head_dim"],
                         f"benchmarks/attention_crossover.py on {name}, margin {args.margin}, setting {used}")
        print(f"crossovers (batch x KV heads: context): {rule.crossover}", flush=True)
        _partial(args, device=name, settings=used, grid=grid, rule=rule.as_json())
        for batch in args.rule_batches:
            for context in args.contexts:
                modes = {"dense": ("dense", None, True), "rule": ("sparse", rule, True)}
                row = guarded(lambda: time_modes(model, decoder, batch, context, modes, device), batch, context,
                              decoder, decoder.fused)
                row["rule_sparse"] = rule.sparse(batch, context, architecture["num_key_value_heads"],
                                                 architecture["head_dim"])
                if "error" not in row:
                    row["speedup"] = row["dense_ms"] / row["rule_ms"]
                checked.append(row)
                print(f"[{time.perf_counter() - began:5.0f} s] rule: {json.dumps(row)}", flush=True)
        _partial(args, device=name, settings=used, grid=grid, rule=rule.as_json(), with_rule=checked)
        print(f"model.generate's path (eager): transformers' DynamicCache vs DoubleSparseCache dense vs sparse, "
              f"{args.generate_points}", flush=True)
        generate_path, eager_rule = eager_rows(model, settings, args.generate_points, device, args.margin, name, began)
        print(f"eager crossovers (batch x KV heads: context): {eager_rule['crossover']}", flush=True)
    slower = [r for r in checked if "error" in r or r["speedup"] < 1.0]
    return {"device": name, "model": {"architecture": architecture, "weights": "random", "dtype": str(model.dtype)},
            "settings": {**used, "selection": "threshold", "budget": "1/16 of the step's context"},
            "timing": f"CUDA graphs, modes interleaved: {ROUNDS} blocks of {BLOCK} replays each, median",
            "margin": args.margin, "grid": grid, "rule": {"gpu": name, **rule.as_json(), "margin": args.margin},
            "with_rule": checked, "generate_path": generate_path, "eager_rule": eager_rule,
            "append_token_matches": fused,
            "fused_append": decoder.fused, "checks": {"rows": len(checked), "at_least_dense": len(checked) - len(slower),
                                             "slower": [(r["batch"], r["context"], round(r.get("speedup", 0), 3))
                                                        for r in slower]},
            "seconds": time.perf_counter() - began}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", help="write the result here")
    parser.add_argument("--store", help="a result file: write its crossovers into the package's dense rule table")
    parser.add_argument("--contexts", type=int, nargs="*", default=[4096, 8192, 16384, 32768, 65536, 131072])
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 4, 16])
    parser.add_argument("--rule-batches", type=int, nargs="*", default=[1, 16])
    parser.add_argument("--generate-points", type=int, nargs="*", default=[1, 8192, 1, 32768, 1, 131072, 4, 32768,
                                                                          4, 131072, 16, 8192, 16, 32768],
                        help="batch, context pairs of the eager model.generate path's grid (three caches held)")
    parser.add_argument("--unfused-batches", type=int, nargs="*", default=[1, 16],
                        help="grid batches also timed without the one-launch append (key sparse_unfused_ms)")
    parser.add_argument("--margin", type=float, default=MARGIN, help="sparse must be this much faster")
    parser.add_argument("--tiny", action="store_true", help="a tiny model, margin 0 (every path runs)")
    args = parser.parse_args()
    if args.store:
        from compress.attention.decoding.dense_rule import store_rule
        from compress.errors import BadInput

        try:
            print(f"stored: {json.dumps(store_rule(json.loads(open(args.store).read())))}")
        except BadInput as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(2) from None
        return
    if not args.json:
        parser.error("--json or --store is required")
    if args.tiny:
        args.contexts, args.batches, args.rule_batches = [48, 96, 192], [1, 2], [1, 2]
        args.generate_points, args.margin = [1, 96, 2, 192], 0.0
    args.generate_points = list(zip(args.generate_points[::2], args.generate_points[1::2]))
    run_meta = meta()
    result = {"meta": run_meta, **run(args)}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print(f"{'B':>3}{'context':>8}{'dense ms':>10}{'sparse ms':>10}{'speedup':>8}{'unfused':>9}")
    for r in result["grid"]:
        if "error" in r:
            print(f"{r['batch']:>3}{r['context']:>8}  {r['error']}")
            continue
        unfused = f"{r['unfused_speedup']:.2f}" if "unfused_speedup" in r else "-"
        print(f"{r['batch']:>3}{r['context']:>8}{r['dense_ms']:>10.3f}{r['sparse_ms']:>10.3f}{r['speedup']:>8.2f}"
              f"{unfused:>9}")
    print(f"rule {result['rule']['crossover']}")
    print(f"{'B':>3}{'context':>8}{'dense ms':>10}{'rule ms':>10}{'speedup':>8}{'sparse':>7}")
    for r in result["with_rule"]:
        if "error" in r:
            print(f"{r['batch']:>3}{r['context']:>8}  {r['error']}")
            continue
        print(f"{r['batch']:>3}{r['context']:>8}{r['dense_ms']:>10.3f}{r['rule_ms']:>10.3f}{r['speedup']:>8.3f}"
              f"{str(r['rule_sparse']):>7}")
    print(f"eager rule {result['eager_rule']['crossover']}")
    print(f"{'B':>3}{'context':>8}{'stock ms':>10}{'dense ms':>10}{'sparse ms':>10}{'rule':>7}{'vs stock':>9}"
          f"{'vs dense':>9}")
    for r in result["generate_path"]:
        if "error" in r:
            print(f"{r['batch']:>3}{r['context']:>8}  {r['error']}")
            continue
        print(f"{r['batch']:>3}{r['context']:>8}{r['stock_ms']:>10.3f}{r['cache_dense_ms']:>10.3f}"
              f"{r['cache_sparse_ms']:>10.3f}{'sparse' if r['rule_sparse'] else 'dense':>7}"
              f"{r['speedup_vs_stock']:>9.2f}{r['speedup_vs_cache_dense']:>9.2f}")
    checks = result["checks"]
    print(f"with the rule: {checks['at_least_dense']} of {checks['rows']} rows >= 1.0x dense "
          f"(below: {checks['slower']}); {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
