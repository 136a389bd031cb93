"""Dense vs Double Sparsity on one model: perplexity, greedy agreement, passkey retrieval.

The token budget T of a fractional --tokens is that fraction of the evaluation context (the perplexity
window, or the prompt plus the generated tokens), fixed for every query.
"""
from __future__ import annotations

import random

import torch

from compress.attention.config import DoubleSparsity
from compress.attention.evaluation.runtime import sparse_attention

__all__ = ["sparse_perplexity", "continuations", "greedy_agreement", "passkey_prompt", "passkey_accuracy"]


def sparse_perplexity(model, ids: torch.Tensor, context: int, device="cpu", settings: DoubleSparsity | None = None,
                      bos_id: int | None = None, oracle: bool = False) -> dict:
    """Perplexity (compress.evaluate.perplexity) with the sparse attention installed (dense if settings is None);
    adds what the budget kept."""
    from compress.evaluate import perplexity

    if settings is None:
        return perplexity(model, ids, context, device, bos_id=bos_id).to_dict()
    with sparse_attention(model, settings, context + (bos_id is not None), oracle) as state:
        result = perplexity(model, ids, context, device, bos_id=bos_id).to_dict()
    return {**result, **state.summary()}


def _cache_argument(model) -> str:
    import inspect

    # newer transformers name the cache argument `cache`, older ones `past_key_values`
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def continuations(model, prompt: torch.Tensor, new_tokens: int, settings: DoubleSparsity | None,
                  device="cpu") -> tuple[torch.Tensor, torch.Tensor | None, dict | None]:
    """Greedy continuations of one dense prefill (as the reference and SGLang run Double Sparsity: the
    prompt densely, each decode step sparsely): (dense tokens, sparse tokens or None, tokens kept).
    T of a fractional --tokens is that fraction of prompt + new tokens."""
    import copy

    from transformers import DynamicCache

    name = _cache_argument(model)
    cache = DynamicCache()
    first = model(input_ids=prompt.to(device)[None], use_cache=True, logits_to_keep=1, **{name: cache}).logits[0, -1].argmax()
    sparse_cache = copy.deepcopy(cache) if settings is not None else None

    def decode(cache) -> torch.Tensor:
        tokens = [first]
        for _ in range(new_tokens - 1):
            logits = model(input_ids=tokens[-1].view(1, 1), use_cache=True, **{name: cache}).logits
            tokens.append(logits[0, -1].argmax())
        return torch.stack(tokens)

    dense = decode(cache)
    if settings is None:
        return dense, None, None
    with sparse_attention(model, settings, prompt.numel() + new_tokens) as state:
        sparse = decode(sparse_cache)
    return dense, sparse, state.summary()


def greedy_agreement(model, prompt: torch.Tensor, new_tokens: int, settings: DoubleSparsity, device="cpu") -> dict:
    """The share of `new_tokens` greedy tokens where sparse decoding agrees with dense, and the common
    prefix (the first token comes from the shared dense prefill)."""
    dense, sparse, kept = continuations(model, prompt, new_tokens, settings, device)
    same = (dense == sparse).tolist()
    prefix = same.index(False) if False in same else len(same)
    return {"agreement": sum(same) / len(same), "common_prefix": prefix, "new_tokens": new_tokens,
            "kept_share": kept["kept_share"]}


FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def passkey_prompt(tokenizer, length: int, depth: float, key: int) -> tuple[torch.Tensor, str]:
    """About `length` tokens of filler with "The pass key is KEY" at `depth` (0 = start, 1 = end), ending
    in the question; returns (ids, the key's text)."""
    needle = f" The pass key is {key}. Remember it. {key} is the pass key. "
    question = " What is the pass key? The pass key is"
    budget = length - len(tokenizer(needle + question, add_special_tokens=False)["input_ids"])
    per_filler = len(tokenizer(FILLER, add_special_tokens=False)["input_ids"])
    fillers = max(1, budget // per_filler)
    before = int(round(fillers * depth))
    text = FILLER * before + needle + FILLER * (fillers - before) + question
    return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"]), str(key)


def spread_order(n: int) -> list[int]:
    """0..n-1 in bit-reversed order (0, n/2, n/4, 3n/4, ...): any first k of them spread over the range."""
    bits = max(1, (n - 1).bit_length())
    return sorted(range(n), key=lambda i: int(format(i, f"0{bits}b")[::-1], 2))


def passkey_accuracy(model, tokenizer, length: int, trials: int, settings: DoubleSparsity, device="cpu",
                     seed: int = 0, new_tokens: int = 8, on_trial=None) -> dict:
    """Share of `trials` prompts (needle depths spread evenly, keys drawn with `seed`) whose greedy
    continuation holds the key, dense and sparse (decode steps sparse after a dense prefill).
    Depths are visited in spread_order, so the trials of a stopped run spread over the depths too;
    `on_trial(result so far)` is called after each trial (its `trials` counts those done)."""
    rng = random.Random(seed)
    found = {"dense": 0, "sparse": 0}
    for t, slot in enumerate(spread_order(trials)):
        ids, key = passkey_prompt(tokenizer, length, (slot + 0.5) / trials, rng.randint(10000, 99999))
        dense, sparse, _ = continuations(model, ids, new_tokens, settings, device)
        found["dense"] += key in tokenizer.decode(dense.tolist())
        found["sparse"] += key in tokenizer.decode(sparse.tolist())
        if on_trial is not None:
            on_trial({"dense": found["dense"] / (t + 1), "sparse": found["sparse"] / (t + 1), "trials": t + 1,
                      "trials_planned": trials, "length": length})
    return {"dense": found["dense"] / trials, "sparse": found["sparse"] / trials, "trials": trials,
            "trials_planned": trials, "length": length}
