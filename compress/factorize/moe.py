"""The in-memory mixture of experts that replaces a dense gated MLP.

Expert e owns a set of intermediate neurons: its gate/up weights are those rows of the dense gate/up,
its down weight those columns of the dense down, times `fold`. Routing is Mixtral's: softmax over the
router logits, top-k, renormalised over the k, so with equal weights a token gets (fold/k)·Σ of its k
experts. fold = k (the default, `scale: top-k`) makes that the plain sum of the chosen experts' neurons;
fold = n (`scale: experts`) is FactorLLM's ×E/k. Either way, with k = n and a zero router every weight is
1/n and fold = n, so the output is the dense FFN (exactly so where n is a power of two: scaling by n and
1/n loses no bits).
Weights are stored as Mixtral stores them: gate_up (n, 2·m, hidden) and down (n, hidden, m).
A shared part (CMoE's shared experts: neurons every token runs, whatever the router picks) is an ordinary
gated FFN of s neurons, shared_gate_up (2·s, hidden) and shared_down (hidden, s), added to the routed output;
models without one hold neither tensor.
Inference on a GPU: up to 16 tokens go through the expert-by-expert Triton kernels (decode.py), up to a few
thousand through blocked.py's (each expert's tokens gathered into blocks), both with the shared part
in the same launches; more through two grouped matmuls over the (token, expert) pairs sorted by expert beside
the shared part's matmuls (the hand-over points and launch settings are measured per GPU: launch.py). None
syncs with the host, so a CUDA graph can hold them. Elsewhere, and while training, a loop over the experts used.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FactorizedMLP", "route"]

KERNEL_ACTIVATIONS = {"SiLU": "silu", "SiLUActivation": "silu", "GELUTanh": "gelu_tanh",
                      "PytorchGELUTanh": "gelu_tanh"}  # act_fn classes the decode kernels compute


def route(logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weights, indices), each (tokens, k): the top-k of the softmax, renormalised (as Mixtral)."""
    probs = torch.softmax(logits.float(), dim=-1)
    weights, indices = torch.topk(probs, top_k, dim=-1)
    return weights / weights.sum(-1, keepdim=True), indices


class FactorizedMLP(nn.Module):
    def __init__(self, gate_up: torch.Tensor, down: torch.Tensor, act_fn: nn.Module, top_k: int,
                 groups: torch.Tensor, fold: float, shared_gate_up: torch.Tensor | None = None,
                 shared_down: torch.Tensor | None = None, shared: torch.Tensor | None = None):
        super().__init__()
        experts, _, hidden = gate_up.shape
        self.gate_up = nn.Parameter(gate_up, requires_grad=False)
        self.down = nn.Parameter(down, requires_grad=False)
        self.router = nn.Linear(hidden, experts, bias=False, dtype=gate_up.dtype, device=gate_up.device)
        nn.init.zeros_(self.router.weight)
        self.act_fn, self.top_k, self.fold = act_fn, top_k, fold
        self.register_buffer("groups", groups, persistent=False)  # (experts, m): dense neuron ids per expert
        self.shared_gate_up = self.shared_down = None
        if shared_gate_up is not None:
            self.shared_gate_up = nn.Parameter(shared_gate_up, requires_grad=False)
            self.shared_down = nn.Parameter(shared_down, requires_grad=False)
        self.register_buffer("shared", shared, persistent=False)  # (s,): dense neuron ids of the shared part

    @classmethod
    def from_dense(cls, gate: nn.Linear, up: nn.Linear, down: nn.Linear, act_fn: nn.Module, groups: torch.Tensor,
                   top_k: int, fold: float | None = None, shared: torch.Tensor | None = None) -> "FactorizedMLP":
        """Slice a dense gated MLP; `groups` (experts, m) lists the intermediate neurons of each expert;
        `fold` (default k) multiplies each expert's down projection; `shared` (s,) neurons always run."""
        fold = float(top_k if fold is None else fold)
        parts = {}
        with torch.no_grad():
            gate_up = torch.cat([gate.weight[groups], up.weight[groups]], dim=1)  # (n, 2m, hidden)
            down_w = down.weight[:, groups].permute(1, 0, 2) * fold  # (n, hidden, m)
            if shared is not None and shared.numel():
                parts = {"shared_gate_up": torch.cat([gate.weight[shared], up.weight[shared]]).contiguous(),
                         "shared_down": down.weight[:, shared].contiguous(), "shared": shared.clone()}
        return cls(gate_up.contiguous(), down_w.contiguous(), act_fn, top_k, groups.clone(), fold, **parts)

    @property
    def num_experts(self) -> int:
        return self.gate_up.shape[0]

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, self.gate_up[e]).chunk(2, dim=-1)
        return F.linear(self.act_fn(gate) * up, self.down[e])

    @property
    def shared_width(self) -> int:
        return 0 if self.shared_down is None else self.shared_down.shape[1]

    def shared_output(self, x: torch.Tensor) -> torch.Tensor:
        """The shared neurons' output (zeros without a shared part)."""
        if self.shared_down is None:
            return torch.zeros_like(x)
        return F.linear(self._shared_neurons(x), self.shared_down)

    def _shared_neurons(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = F.linear(x, self.shared_gate_up).chunk(2, dim=-1)
        return self.act_fn(gate) * up

    def all_experts(self, x: torch.Tensor) -> torch.Tensor:
        """(tokens, experts, hidden): every expert's output (×fold), for pseudo-labels and losses."""
        return torch.stack([self.expert(e, x) for e in range(self.num_experts)], dim=1)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """The dense FFN the experts were cut from: Σ of every expert, the fold undone, plus the shared part."""
        return self.all_experts(x).sum(1) / self.fold + self.shared_output(x)

    def grouped(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """The routed output through two grouped matmuls over the pairs sorted by expert; each pair's routing
        weight scales its m activations before the down matmul (fewer bytes than scaling its output)."""
        flat = indices.flatten()
        order = flat.argsort(stable=True)
        counts = torch.zeros(self.num_experts, dtype=torch.long, device=x.device).scatter_add_(
            0, flat, torch.ones_like(flat))
        offsets = counts.cumsum(0).to(torch.int32)
        hidden = F.grouped_mm(x[order // self.top_k], self.gate_up.transpose(1, 2), offs=offsets)
        gate, up = hidden.chunk(2, dim=-1)
        neurons = self.act_fn(gate) * up
        if self.top_k > 1:  # with one expert the renormalised weight is exactly 1
            neurons = neurons * weights.flatten()[order, None].to(neurons.dtype)
        pairs = F.grouped_mm(neurons, self.down.transpose(1, 2), offs=offsets)
        unsorted = torch.empty_like(pairs).index_copy_(0, order, pairs)
        if self.top_k == 1:
            return unsorted
        return unsorted.view(x.shape[0], self.top_k, -1).sum(1)  # accumulates in float32

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        shape = hidden_states.shape
        x = hidden_states.reshape(-1, shape[-1])
        if self._decode_kernels_apply(x):
            return self._decode(x).reshape(shape)
        if self._blocked_kernels_apply(x):
            return self._blocked(x).reshape(shape)
        routed = self.routed(x)
        if self.shared_down is not None:  # the shared part's down matmul adds onto the routed output
            routed = torch.addmm(routed, self._shared_neurons(x), self.shared_down.t())
        return routed.reshape(shape)

    def _kernels_apply(self, x: torch.Tensor) -> bool:
        return x.is_cuda and not torch.is_grad_enabled() and type(self.act_fn).__name__ in KERNEL_ACTIVATIONS

    def _decode_kernels_apply(self, x: torch.Tensor) -> bool:
        from compress.factorize.launch import bounds

        return self._kernels_apply(x) and x.shape[0] <= min(bounds(x.device)["decode"], 16)  # decode.MAX_TOKENS

    def _blocked_kernels_apply(self, x: torch.Tensor) -> bool:
        from compress.factorize.launch import bounds

        return self._kernels_apply(x) and x.shape[0] <= bounds(x.device)["blocked"]

    def _blocked(self, x: torch.Tensor) -> torch.Tensor:
        """Routed and shared output of tens to thousands of tokens in five launches (blocked.py)."""
        from compress.factorize.blocked import experts_blocked  # Triton: GPU machines only

        return experts_blocked(x, self.router.weight, self.gate_up, self.down, self.top_k,
                               KERNEL_ACTIVATIONS[type(self.act_fn).__name__] == "gelu_tanh",
                               shared_gate_up=self.shared_gate_up, shared_down=self.shared_down)

    def _decode(self, x: torch.Tensor, shared: bool = True) -> torch.Tensor:
        """Routed (and shared) output of ≤ 16 tokens in three Triton launches (decode.py)."""
        from compress.factorize.decode import experts_decode, route_decode  # Triton: GPU machines only

        weights, indices = route_decode(x, self.router.weight, self.top_k)
        parts = {"shared_gate_up": self.shared_gate_up, "shared_down": self.shared_down} if shared else {}
        return experts_decode(x, self.gate_up, self.down, indices, weights,
                              KERNEL_ACTIVATIONS[type(self.act_fn).__name__] == "gelu_tanh", **parts)

    def routed(self, x: torch.Tensor) -> torch.Tensor:
        """The routed experts' output for (tokens, hidden) x."""
        if x.is_cuda and not torch.is_grad_enabled():
            if self._decode_kernels_apply(x):
                return self._decode(x, shared=False)
            if hasattr(F, "grouped_mm"):
                return self.grouped(x, *route(self.router(x), self.top_k))
        weights, indices = route(self.router(x), self.top_k)
        out = torch.zeros_like(x)
        for e in indices.unique().tolist():
            token, slot = torch.where(indices == e)
            y = self.expert(e, x[token]) * weights[token, slot, None].to(x.dtype)
            out.index_add_(0, token, y)
        return out
