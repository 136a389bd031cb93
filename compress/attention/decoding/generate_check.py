"""Checks of Double Sparsity decoding inside a model (compress.attention.decoding.generate's Decoder, and stock
`model.generate` with compress.attention.decoding.cache's DoubleSparseCache) against independent paths:
dense decoding through transformers' own cache, and the evaluation mode (compress.attention.evaluation.runtime: the
PyTorch sparse attention with transformers' cache) after the same dense prefill. Used by the tests (CPU,
Triton's interpreter, GPU) and by benchmarks/attention_decode.py.
"""
from __future__ import annotations

from pathlib import Path

import torch

from compress.attention.decoding.generate import MODES, Decoder, decoder_from_settings, greedy_generate

__all__ = ["random_channel_file", "cache_logits", "compare_decoding", "compare_cache_generation",
           "failed_rules", "appended_labels_exact", "appended_tokens_match", "host_syncs"]


def random_channel_file(model, path: str | Path, seed: int = 0, prior: bool = False, projection: bool = False) -> Path:
    """A channel file of random rankings for `model` (timing and equivalence checks need no calibration);
    `prior` / `projection`: with a random position prior / random projected labels' maps too."""
    from compress.attention.calibration.calibrate import attention_parts
    from compress.attention.calibration.channels import write_channel_file
    from compress.model.roles import HeadLayout

    layout = HeadLayout.of(model.config)
    generator = torch.Generator().manual_seed(seed)

    def rows(count: int) -> torch.Tensor:
        return torch.stack([torch.randperm(layout.head_dim, generator=generator) for _ in range(count)])

    layers = len(attention_parts(model))
    priors = None
    if prior:
        from compress.attention.calibration.prior import BUCKETS

        priors = [torch.randn(layout.num_kv_heads, BUCKETS, generator=generator) * 4 for _ in range(layers)]
    maps = None
    if projection:
        shape = (layout.num_kv_heads, layout.head_dim, layout.head_dim)
        maps = [(torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)) for _ in range(layers)]
    return write_channel_file(path, "qk", model.config, [rows(layout.num_heads) for _ in range(layers)],
                              [rows(layout.num_kv_heads) for _ in range(layers)], windows=0, tokens=0,
                              projection=maps, prior=priors)


@torch.no_grad()
def cache_logits(model, prompt: torch.Tensor, forced: torch.Tensor, settings=None, context: int = 0) -> torch.Tensor:
    """(b, steps, vocab) float32 logits of a dense prefill then decode steps fed `forced` (b, steps) through
    transformers' DynamicCache; the steps run in the evaluation mode's sparse attention when `settings`."""
    from contextlib import nullcontext

    from transformers import DynamicCache

    from compress.attention.evaluation.measure import _cache_argument
    from compress.attention.evaluation.runtime import sparse_attention

    cache = {_cache_argument(model): DynamicCache()}
    logits = [model(input_ids=prompt, use_cache=True, **cache).logits[:, -1].float()]
    with sparse_attention(model, settings, context) if settings is not None else nullcontext():
        for step in range(forced.shape[1] - 1):
            logits.append(model(input_ids=forced[:, step:step + 1], use_cache=True, **cache).logits[:, -1].float())
    return torch.stack(logits, 1)


def _error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest logit difference relative to the largest |logit|."""
    return float((a - b).abs().max() / b.abs().max())


def _near_argmax(tokens: torch.Tensor, ours: torch.Tensor, reference: torch.Tensor) -> bool:
    """Every token is the reference's argmax up to twice the logits' largest difference (greedy choices at
    near-ties may flip within numerical error, e.g. over a large vocabulary of near-uniform random logits)."""
    chosen = reference.gather(-1, tokens[..., None])[..., 0]
    return bool((reference.amax(-1) - chosen <= 2 * (ours - reference).abs().max()).all())


def compare_decoding(model, prompt: torch.Tensor, new_tokens: int, settings, selection: str = "threshold") -> dict:
    """The decoder vs dense decoding (T ≥ every step's context) and vs the evaluation mode (T fixed by
    prompt + new tokens, as the evaluation mode fixes it): greedy tokens and teacher-forced logits."""
    context = prompt.shape[1] + new_tokens
    dense_tokens, dense_logits = greedy_generate(model, prompt, new_tokens, Decoder(
        decoder_from_settings(model, settings, selection=selection).heavy, lambda n: n, settings.label_bits, selection))
    reference = cache_logits(model, prompt, dense_tokens)
    sparse = decoder_from_settings(model, settings, context, selection)
    tokens, _ = greedy_generate(model, prompt, new_tokens, sparse, reserve=False)  # buffers grow while decoding
    evaluation = cache_logits(model, prompt, tokens, settings, context)
    forced = decoder_from_settings(model, settings, context, selection)
    _, logits = greedy_generate(model, prompt, new_tokens, forced, forced=tokens)
    return _row(model, prompt, settings, selection, (dense_tokens, dense_logits, reference), (tokens, logits, evaluation),
                sparse)


def compare_cache_generation(model, prompt: torch.Tensor, new_tokens: int, settings, selection: str = "threshold"
                             ) -> dict:
    """`model.generate` with a DoubleSparseCache vs stock dense generation (the cache at T = the whole context)
    and vs the evaluation mode (T fixed by prompt + new tokens): the keys of `compare_decoding`."""
    from compress.attention.decoding.cache import DoubleSparseCache, generate_tokens

    context = prompt.shape[1] + new_tokens
    dense_tokens, dense_logits = generate_tokens(model, prompt, new_tokens)
    everything = settings.model_copy(update={"tokens": "1/1"})
    full_tokens, full_logits = generate_tokens(model, prompt, new_tokens, DoubleSparseCache(
        model, everything, selection=selection, dense_rule=None))
    cache = DoubleSparseCache(model, settings, context, selection, dense_rule=None)
    tokens, logits = generate_tokens(model, prompt, new_tokens, cache)
    evaluation = cache_logits(model, prompt, tokens, settings, context)
    return _row(model, prompt, settings, selection, (full_tokens, full_logits, dense_logits),
                (tokens, logits, evaluation), cache)


def _row(model, prompt: torch.Tensor, settings, selection: str, dense: tuple, sparse: tuple, counted) -> dict:
    """The comparison's numbers: `dense` and `sparse` are (tokens, logits, the reference logits they are held
    to); `counted` has the sparse run's `steps` and `kept`."""
    (dense_tokens, dense_logits, reference), (tokens, logits, evaluation) = dense, sparse
    new_tokens = tokens.shape[1]
    return {"prompt": prompt.shape[1], "batch": prompt.shape[0], "new_tokens": new_tokens,
            "budget": settings.token_count(prompt.shape[1] + new_tokens), "selection": selection,
            "label_bits": settings.label_bits,
            "dense_tokens_equal": bool(torch.equal(dense_tokens, reference.argmax(-1))),
            "dense_logit_error": _error(dense_logits, reference),
            "dense_tokens_near_argmax": _near_argmax(dense_tokens, dense_logits, reference),
            "sparse_tokens_equal_evaluation": bool(torch.equal(tokens, evaluation.argmax(-1))),
            "sparse_tokens_near_argmax": _near_argmax(tokens, logits, evaluation),
            "sparse_logit_error_vs_evaluation": _error(logits, evaluation),
            "sparse_logit_change_vs_dense": _error(evaluation, cache_logits(model, prompt, tokens)),
            "sparse_steps": counted.steps, "kept_per_step": counted.kept / max(1, counted.steps)}


def failed_rules(row: dict, sparse_layers: int, exact_bound: float = 5e-3) -> list[str]:
    """The rules a comparison row (compare_decoding, compare_cache_generation) breaks, the same for the tests
    and the benchmarks: dense tokens and logits equal the reference's; sparse tokens equal the evaluation
    mode's argmax and its logits within `exact_bound` of the largest (16-bit labels, float32 scores: topk) or
    0.1 (float16 scores or 4-bit labels, whose min and step are float16, may swap a token at the budget's
    edge); the budget does change the logits; every step of every sparse layer ran sparse, keeping T."""
    exact = row["label_bits"] == 16 and row["selection"] == "topk"
    rules = {"dense tokens equal": row["dense_tokens_equal"], "dense logits within 5e-3": row["dense_logit_error"] < 5e-3,
             "sparse tokens equal the evaluation mode's": row["sparse_tokens_equal_evaluation"],
             "sparse logits near the evaluation mode's": row["sparse_logit_error_vs_evaluation"] < (
                 exact_bound if exact else 0.1),
             "the budget changes the logits": row["sparse_logit_change_vs_dense"] > 0.05,
             "every step sparse": row["sparse_steps"] == sparse_layers * (row["new_tokens"] - 1),
             "T kept": row["kept_per_step"] == row["budget"]}
    return [name for name, held in rules.items() if not held]


def appended_labels_exact(device: str) -> list[bool]:
    """append_labels (one token or several at a time, keys with transformers' strides) writes exactly what
    label_cache builds over the whole cache, 4- and 16-bit; with flat keys and exact half-step ties."""
    from compress.attention.decode_kernels.append import append_labels
    from compress.attention.decode_kernels.labels import label_cache

    generator = torch.Generator().manual_seed(0)
    found = []
    for r, bits, dtype in [(4, 4, torch.float16), (12, 4, torch.bfloat16), (8, 16, torch.float16),
                           (3, 4, torch.float32), (4, 16, torch.float32)]:
        key = (torch.randn(2, 7, 3, 64, generator=generator) * 3).to(dtype).transpose(1, 2)  # (b, kv, n, d)
        key[0, 0, 0] = 1.0  # max = min: the step's floor
        key[1, 2, 3, :8] = torch.tensor([0.0, 15.0, 7.5, 2.5, 1.0, 3.5, 4.5, 0.5])  # codes exactly half-way
        heavy = torch.stack([torch.randperm(64, generator=generator)[:r] for _ in range(3)])
        heavy[2, :min(r, 8)] = torch.arange(min(r, 8))
        key, heavy = key.to(device), heavy.to(device)
        full = label_cache(key, heavy, bits)
        one, split = torch.zeros_like(full), torch.zeros_like(full)
        for t in range(7):
            append_labels(one, key[:, :, t:t + 1], heavy, t)
        append_labels(split, key[:, :, 2:], heavy, 2)
        append_labels(split, key[:, :, :2], heavy, 0)
        found.append(torch.equal(one, full) and torch.equal(split, full))
    return found


def appended_tokens_match(device: str) -> dict[str, bool]:
    """append_token (a decode step's key, value and labels in one launch; keys and values with transformers'
    strides) writes the keys and values exactly, and the labels label_cache builds: exactly from heavy
    channels; from projected keys k B up to float32 rounding (16 bits: within float16 rounding; 4 bits: the
    dequantized labels within one code step)."""
    from compress.attention.decode_kernels.append import append_token
    from compress.attention.decode_kernels.decode_torch import dequantize_labels, label_cache

    generator = torch.Generator().manual_seed(1)
    found = {}
    for r, bits, dtype, project in [(4, 4, torch.float16, False), (8, 16, torch.bfloat16, False),
                                    (12, 4, torch.float16, False), (8, 4, torch.float16, True),
                                    (8, 16, torch.float16, True)]:
        key = (torch.randn(2, 7, 3, 64, generator=generator) * 3).to(dtype).transpose(1, 2).to(device)
        value = torch.randn(2, 7, 3, 64, generator=generator).to(dtype).transpose(1, 2).to(device)
        heavy = torch.stack([torch.randperm(64, generator=generator)[:r] for _ in range(3)]).to(device)
        key_map = torch.randn(3, 64, r, generator=generator).to(device) if project else None
        if project:
            heavy = torch.arange(r, device=device).expand(3, r).contiguous()
        source = key if key_map is None else key.float() @ key_map[None]
        full = label_cache(source, heavy, bits)
        keys, values = key.new_zeros(2, 3, 9, 64), value.new_zeros(2, 3, 9, 64)
        labels = torch.zeros_like(full.narrow(-1 if bits == 4 else 2, 0, 1)).repeat(
            *((1, 1, 1, 9) if bits == 4 else (1, 1, 9, 1)))
        for t in range(7):
            append_token(keys, values, labels, key[:, :, t:t + 1], value[:, :, t:t + 1], heavy, t, key_map)
        ours = labels.narrow(-1 if bits == 4 else 2, 0, 7)
        if not project:
            same = torch.equal(ours, full)
        elif bits == 16:
            same = torch.allclose(ours.float(), full.float(), rtol=2e-3, atol=1e-3)
        else:
            step = ((source.amax(-1) - source.amin(-1)) / 15).max()
            same = float((dequantize_labels(ours, r) - dequantize_labels(full, r)).abs().max()) <= 1.01 * float(step)
        written = torch.equal(keys[:, :, :7], key) and torch.equal(values[:, :, :7], value) and \
            not keys[:, :, 7:].any()
        found[f"{bits}-bit {'projected' if project else f'r={r}'} {str(dtype)[6:]}"] = bool(same and written)
    return found


@torch.no_grad()
def host_syncs(model, decoder: Decoder, batch: int, length: int) -> dict[str, int]:
    """Host reads of tensor values (what .item() or bool(tensor) do: a CUDA graph cannot hold them) during
    one decode step after `length` random cached tokens, per mode; seen at the dispatcher, so on any device."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from compress.attention.decoding.generate import installed, step_inputs

    reads = (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default)

    class Count(TorchDispatchMode):
        found = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.found += func in reads
            return func(*args, **(kwargs or {}))

    config, device = model.config, next(model.parameters()).device
    decoder.stores.clear()
    decoder.capacity = length + 1
    for layer in range(len(decoder.heavy)):
        shape = (batch, config.num_key_value_heads, length, config.head_dim)
        decoder.append(layer, torch.randn(shape, device=device, dtype=model.dtype),
                       torch.randn(shape, device=device, dtype=model.dtype))
    ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
    inputs = step_inputs(batch, length, device)
    found = {}
    with installed(model, decoder):
        for mode in MODES:
            decoder.mode = mode
            decoder.rewind(length)
            with Count() as count:
                model(input_ids=ids, **inputs)
            found[mode] = count.found
    decoder.mode = "sparse"
    return found
