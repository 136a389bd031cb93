"""CUDA graphs for the kernel paths: cuSPARSELt spends ~0.5 ms of host time per call outside a graph, so a
model on the sparse kernels is only fast when its forward is captured once and replayed."""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["capture", "graphed_logits"]


def capture(fn, replays: int = 1):
    """(graph, output of the last captured call): `fn` warmed up on a side stream, then captured `replays`×."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(replays):
            out = fn()
    return graph, out


def graphed_logits(model) -> Callable[[torch.Tensor], torch.Tensor]:
    """input_ids → logits through one CUDA graph per input shape (captured on first use); the returned
    logits live in the graph's buffer, valid until the next call."""
    graphs: dict[tuple, tuple] = {}

    def forward(ids: torch.Tensor) -> torch.Tensor:
        key = tuple(ids.shape)
        if key not in graphs:
            static = ids.clone()
            graph, logits = capture(lambda: model(input_ids=static, use_cache=False).logits)
            graphs[key] = (static, graph, logits)
        static, graph, logits = graphs[key]
        static.copy_(ids)
        graph.replay()
        return logits

    return forward
