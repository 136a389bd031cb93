"""Finding the gated MLP of a decoder layer (gate, up, down and its own activation), for any family.

A gated MLP computes down(act(gate(x)) · up(x)): Llama, Mistral, Qwen2/Qwen3 (SiLU) and Gemma/Gemma3
(GELU-tanh). Projections are recognised by their roles (compress/model/roles.py), the activation is the
module's own `act_fn`, so no family is spelled out here.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from compress.errors import BadInput
from compress.model.roles import role_of

__all__ = ["GatedMLP", "find_gated_mlp"]


@dataclass
class GatedMLP:
    name: str  # full module name of the MLP
    parent: nn.Module
    attribute: str  # parent.<attribute> is the MLP
    module: nn.Module
    gate: nn.Linear
    up: nn.Linear
    down: nn.Linear
    act_fn: nn.Module

    @property
    def intermediate(self) -> int:
        return self.gate.out_features


def _roles(module: nn.Module) -> dict[str, nn.Linear]:
    return {role_of(name): child for name, child in module.named_children()
            if isinstance(child, nn.Linear) and role_of(name) in ("gate", "up", "down")}


def find_gated_mlp(layer: nn.Module, layer_name: str) -> GatedMLP:
    """The one gated MLP inside a decoder layer; BadInput if there is none (or it has biases)."""
    for name, module in layer.named_modules():
        roles = _roles(module)
        if len(roles) != 3 or not callable(getattr(module, "act_fn", None)):
            continue
        if any(linear.bias is not None for linear in roles.values()):
            raise BadInput(f"{layer_name}.{name}: MLP Linears with biases are not supported by factorize")
        parent_name, _, attribute = name.rpartition(".")
        return GatedMLP(f"{layer_name}.{name}", layer.get_submodule(parent_name), attribute, module,
                        roles["gate"], roles["up"], roles["down"], module.act_fn)
    raise BadInput(f"{layer_name}: no gated MLP (gate, up and down projections with an act_fn) to factorize")
