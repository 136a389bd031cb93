"""Perplexity on held-out text, over non-overlapping windows of a fixed context.

With `bos_id` (compress.calibrate.data.window_bos: the tokenizer's BOS where it adds one) a window of
context C is [BOS] + C text tokens and all C text tokens are scored, the first one predicted from BOS;
C is capped so that C + 1 fits the model's positions. Without it a window is C text tokens and the
C − 1 after the first are scored (the behaviour before BOS windows, and still that of BOS-less tokenizers).
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch

from compress.errors import BadInput

__all__ = ["Perplexity", "perplexity", "on_device"]


@dataclass
class Perplexity:
    perplexity: float
    nll: float
    tokens: int
    windows: int
    context: int
    seconds: float
    bos: bool = False  # windows started with the tokenizer's BOS

    def to_dict(self) -> dict:
        return asdict(self)


@contextmanager
def on_device(model, device: torch.device):
    """Run `model` on `device`: moved whole when it fits in 80% of free memory, else streamed by accelerate.

    A model already placed by accelerate (loaded with a device_map) runs where it is.
    """
    from compress.model.placement import is_dispatched

    if is_dispatched(model):
        yield model
        return
    home = next(model.parameters()).device
    if device.type != "cuda" or home == device:
        yield model
        return
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    free, _ = torch.cuda.mem_get_info(device)
    if size < 0.8 * free:
        model.to(device)
        try:
            yield model
        finally:
            model.to(home)
        return
    from accelerate import cpu_offload
    from accelerate.hooks import remove_hook_from_submodules

    cpu_offload(model, execution_device=device)
    try:
        yield model
    finally:
        remove_hook_from_submodules(model)


@torch.no_grad()
def perplexity(model, ids: torch.Tensor, context: int = 1024, device: str | torch.device = "cpu",
               batch_size: int = 1, forward=None, bos_id: int | None = None) -> Perplexity:
    """exp(mean next-token NLL) over consecutive windows of `context` text tokens of a 1-D id tensor, each
    after `bos_id` when one is given (module docstring). `forward(input_ids) -> logits` replaces the
    model's own call (e.g. a CUDA-graphed one)."""
    lead = 0 if bos_id is None else 1
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and context + lead > max_positions:
        context = max_positions - lead
    windows = ids.numel() // context
    if windows < 1:
        raise BadInput(f"evaluation text has {ids.numel()} tokens, fewer than the context {context}")
    device = torch.device(device)
    started = time.perf_counter()
    chunks = ids[: windows * context].view(windows, context)
    if lead:
        chunks = torch.cat([torch.full((windows, 1), bos_id, dtype=chunks.dtype), chunks], dim=1)
    total_nll, total_tokens = 0.0, 0
    with on_device(model, device):
        for batch in chunks.split(batch_size):
            batch = batch.to(device)
            logits = forward(batch) if forward else model(input_ids=batch, use_cache=False).logits
            logits = logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total_nll += nll.item()
            total_tokens += batch[:, 1:].numel()
    mean = total_nll / total_tokens
    return Perplexity(math.exp(mean), mean, total_tokens, windows, context, time.perf_counter() - started,
                      lead == 1)
