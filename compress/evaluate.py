"""Perplexity on held-out text, over non-overlapping windows of a fixed context."""
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
               batch_size: int = 1, forward=None) -> Perplexity:
    """exp(mean next-token NLL) over consecutive windows of `context` tokens of a 1-D id tensor.
    `forward(input_ids) -> logits` replaces the model's own call (e.g. a CUDA-graphed one)."""
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if max_positions and context > max_positions:
        context = max_positions
    windows = ids.numel() // context
    if windows < 1:
        raise BadInput(f"evaluation text has {ids.numel()} tokens, fewer than the context {context}")
    device = torch.device(device)
    started = time.perf_counter()
    chunks = ids[: windows * context].view(windows, context)
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
    return Perplexity(math.exp(mean), mean, total_tokens, windows, context, time.perf_counter() - started)
