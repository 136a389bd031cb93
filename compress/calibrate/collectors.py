"""Statistics gathered from a module's inputs (or outputs) during the calibration pass.

A collector sees every batch that flows into one module and keeps a running statistic. Modules that
read the very same tensor (q/k/v read one normed hidden state, gate/up another) share one collector,
so each statistic is computed once per distinct input. New methods add a collector class here and a
name in COLLECTORS.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

__all__ = ["Collector", "InputNorm", "Hessian", "ChannelMeanAbs", "COLLECTORS", "collect_inputs", "collect_outputs"]


class Collector:
    """Accumulates a statistic of a module's input activations, flattened to (tokens, features)."""

    def __init__(self, features: int, device: torch.device):
        self.features = features
        self.device = device
        self.tokens = 0

    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1])
        self.tokens += x.shape[0]
        self._update(x)

    def _update(self, x: torch.Tensor) -> None:
        raise NotImplementedError


class InputNorm(Collector):
    """Squared L2 norm of each input channel over all calibration tokens (Wanda, RIA)."""

    def __init__(self, features: int, device: torch.device):
        super().__init__(features, device)
        self.sum_sq = torch.zeros(features, dtype=torch.float32, device=device)

    def _update(self, x: torch.Tensor) -> None:
        self.sum_sq += x.float().pow(2).sum(0)

    def norm(self) -> torch.Tensor:
        return self.sum_sq.sqrt()

    def permuted(self, perm: torch.Tensor) -> "InputNorm":
        view = InputNorm.__new__(InputNorm)
        view.features, view.device, view.tokens = self.features, self.device, self.tokens
        view.sum_sq = self.sum_sq[perm.to(self.sum_sq.device)]
        return view


class Hessian(Collector):
    """Sum of x·xᵀ over calibration tokens, the layer-wise Hessian of SparseGPT/OBS up to a factor."""

    def __init__(self, features: int, device: torch.device):
        super().__init__(features, device)
        self.xtx = torch.zeros(features, features, dtype=torch.float32, device=device)

    def _update(self, x: torch.Tensor) -> None:
        x = x.float()
        # TF32 keeps fp32 accumulation; full fp32 would dominate the run time on large layers.
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            self.xtx.addmm_(x.t(), x)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = previous

    def matrix(self) -> torch.Tensor:
        return self.xtx * (2.0 / max(self.tokens, 1))

    def permuted(self, perm: torch.Tensor) -> "Hessian":
        perm = perm.to(self.xtx.device)
        view = Hessian.__new__(Hessian)
        view.features, view.device, view.tokens = self.features, self.device, self.tokens
        view.xtx = self.xtx[perm][:, perm]
        return view


class ChannelMeanAbs(Collector):
    """Mean |x| of each channel over all tokens (e.g. a projection's outputs, or post-RoPE q/k channels)."""

    def __init__(self, features: int, device: torch.device):
        super().__init__(features, device)
        self.sum_abs = torch.zeros(features, dtype=torch.float64, device=device)

    def _update(self, x: torch.Tensor) -> None:
        self.sum_abs += x.double().abs().sum(0)

    def mean(self) -> torch.Tensor:
        return self.sum_abs / max(self.tokens, 1)


COLLECTORS: dict[str, type[Collector]] = {"input_norm": InputNorm, "hessian": Hessian, "channel_mean_abs": ChannelMeanAbs}


@contextmanager
def collect_outputs(modules: dict[str, nn.Module], kind: str) -> Iterator[dict[str, Collector]]:
    """Attach a `kind` collector to each module's output (its first tensor when it returns a tuple).

    Yields {module name: collector}, filled in as batches flow through the modules.
    """
    cls = COLLECTORS[kind]
    collectors: dict[str, Collector] = {}

    def hook_for(name: str):
        def hook(_module, _args, output):
            y = output[0] if isinstance(output, (tuple, list)) else output
            if name not in collectors:
                collectors[name] = cls(y.shape[-1], y.device)
            collectors[name].update(y.detach())

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in modules.items()]
    try:
        yield collectors
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def collect_inputs(modules: dict[str, nn.Linear], kind: str) -> Iterator[dict[str, Collector]]:
    """Attach a `kind` collector to each module's input; modules fed the same tensor share one.

    Yields {module name: collector}; the dict fills in as batches flow through the modules.
    """
    cls = COLLECTORS[kind]
    collectors: dict[str, Collector] = {}
    feeds: set[str] = set()  # one module per shared collector updates it
    first_batch_inputs: list[tuple[torch.Tensor, Collector]] = []  # held so `is` stays meaningful

    def hook_for(name: str, module: nn.Linear):
        def hook(_module, args):
            x = args[0]
            if name in collectors:
                first_batch_inputs.clear()
            else:
                shared = next((c for t, c in first_batch_inputs if t is x), None)
                if shared is None:
                    collectors[name] = cls(module.in_features, x.device)
                    feeds.add(name)
                    first_batch_inputs.append((x, collectors[name]))
                else:
                    collectors[name] = shared
            if name in feeds:
                collectors[name].update(x.detach())

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n, m)) for n, m in modules.items()]
    try:
        yield collectors
    finally:
        first_batch_inputs.clear()
        for handle in handles:
            handle.remove()
