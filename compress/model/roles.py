"""Which Linear does what: one table of projection roles, by module name, for every decoder family.

Permutations (what folds where), kernels and the factorize/attention stages all ask this table
instead of spelling module names themselves. Roles:
  q, k, v, qkv  attention projections reading the residual stream; o writes it back
  gate, up      MLP projections reading the residual stream (gate_up: both fused); down writes it back
  router        MoE routers reading the residual stream; writer: writes it, block unknown (GPT-2's c_proj)
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ROLES", "role_of", "names_with", "RESIDUAL_READERS", "RESIDUAL_WRITERS", "HEAD_NORMS", "HeadLayout"]

ROLES: dict[str, str] = {
    "q_proj": "q", "k_proj": "k", "v_proj": "v", "qkv_proj": "qkv", "query_key_value": "qkv",
    "o_proj": "o", "out_proj": "o", "dense": "o",
    "gate_proj": "gate", "w1": "gate",
    "up_proj": "up", "w3": "up", "fc1": "up", "fc": "up", "c_fc": "up", "dense_h_to_4h": "up",
    "gate_up_proj": "gate_up",
    "down_proj": "down", "w2": "down", "fc2": "down", "dense_4h_to_h": "down",
    "c_proj": "writer",
    "gate": "router", "router": "router", "shared_expert_gate": "router",
}

_READING = {"q", "k", "v", "qkv", "gate", "up", "gate_up", "router"}
_WRITING = {"o", "down", "writer"}


def role_of(module_name: str) -> str | None:
    """The role of a Linear from the last component of its module name (None: unknown)."""
    return ROLES.get(module_name.rsplit(".", 1)[-1])


def names_with(*roles: str) -> tuple[str, ...]:
    """Module names (last component) that play any of `roles`, in table order."""
    return tuple(name for name, role in ROLES.items() if role in roles)


RESIDUAL_READERS = frozenset(names_with(*_READING))  # input columns index the residual stream
RESIDUAL_WRITERS = frozenset(names_with(*_WRITING))  # output rows index the residual stream
# Norms over head_dim, not hidden; left alone even when head_dim happens to equal hidden.
HEAD_NORMS = frozenset({"q_norm", "k_norm", "q_layernorm", "k_layernorm"})


@dataclass(frozen=True)
class HeadLayout:
    """How attention heads tile q/k/v/o: query heads, key/value heads (GQA) and the width of one head."""

    num_heads: int
    num_kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, config) -> "HeadLayout | None":
        heads = getattr(config, "num_attention_heads", None)
        if not heads:
            return None
        kv = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(heads, kv, head_dim)

    def kv_of_head(self):
        import torch

        return torch.arange(self.num_heads) // (self.num_heads // self.num_kv_heads)
