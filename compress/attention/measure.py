"""Dense vs Double Sparsity on one model: perplexity, greedy agreement, passkey retrieval.

The token budget T of a fractional --tokens is that fraction of the evaluation context (the perplexity
window, or the prompt plus the generated tokens), fixed for every query.
"""
from __future__ import annotations

import random

import torch

from compress.attention.config import DoubleSparsity
from compress.attention.runtime import sparse_attention

__all__ = ["sparse_perplexity", "greedy_agreement", "passkey_prompt", "passkey_accuracy"]


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


@torch.no_grad()
def _greedy(model, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy continuation with the KV cache, one token a step (no sampling, no stop token)."""
    import inspect

    from transformers import DynamicCache

    # newer transformers name the cache argument `cache`, older ones `past_key_values`
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = DynamicCache()
    out = model(input_ids=prompt[None], use_cache=True, **{name: cache})
    tokens = []
    for _ in range(new_tokens):
        token = out.logits[0, -1].argmax()
        tokens.append(token)
        out = model(input_ids=token.view(1, 1), use_cache=True, **{name: cache})
    return torch.stack(tokens)


def greedy_agreement(model, prompt: torch.Tensor, new_tokens: int, settings: DoubleSparsity, device="cpu",
                     oracle: bool = False) -> dict:
    """Generate `new_tokens` greedily, dense and sparse, from the same prompt; the share of positions that
    agree and the length of the common prefix."""
    prompt = prompt.to(device)
    dense = _greedy(model, prompt, new_tokens)
    with sparse_attention(model, settings, prompt.numel() + new_tokens, oracle) as state:
        sparse = _greedy(model, prompt, new_tokens)
    same = (dense == sparse).tolist()
    prefix = same.index(False) if False in same else len(same)
    return {"agreement": sum(same) / len(same), "common_prefix": prefix, "new_tokens": new_tokens,
            "kept_share": state.summary()["kept_share"]}


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


def passkey_accuracy(model, tokenizer, length: int, trials: int, settings: DoubleSparsity | None, device="cpu",
                     seed: int = 0, new_tokens: int = 8) -> dict:
    """Share of `trials` prompts (needle depths spread evenly, keys drawn with `seed`) whose greedy
    continuation holds the key; dense when settings is None."""
    rng = random.Random(seed)
    found = 0
    for t in range(trials):
        ids, key = passkey_prompt(tokenizer, length, (t + 0.5) / trials, rng.randint(10000, 99999))
        ids = ids.to(device)
        if settings is None:
            continuation = _greedy(model, ids, new_tokens)
        else:
            with sparse_attention(model, settings, ids.numel() + new_tokens):
                continuation = _greedy(model, ids, new_tokens)
        found += key in tokenizer.decode(continuation.tolist())
    return {"accuracy": found / trials, "trials": trials, "length": length}
