"""Folding input-channel permutations into the modules that produce those inputs.

Before N:M pruning a Linear's input channels may be reordered (W' = W[:, perm]) so that important
weights spread over the M-groups. The permuted Linear then needs x[..., perm]; folding makes the
producer of x emit that order itself, so the model gives the same outputs at no run-time cost.

Convention: `perm` is a LongTensor; new position i holds old channel perm[i]. Consumers take
W[:, perm]; producers take W[perm, :] and bias[perm]. Everything is changed in place.

Which sites fold exactly:
- MLP down_proj input: yes, through the output rows of gate_proj and up_proj (the activation and the
  gate * up product are elementwise). Any permutation, chosen per layer.
- Attention o_proj input: yes, through the output rows of v_proj, but only within a head (attention
  mixes tokens, not features) and with the same permutation for every query head that shares a KV
  head. `attention_values_perm` gives the full o_proj order such per-KV-head choices amount to.
- q/k/v/gate/up (and lm_head) inputs: only one permutation of the hidden (residual) dimension for
  the whole model, since every layer reads and writes the same residual stream (`fold_residual`).
  Norms on the hidden dimension are elementwise after a permutation-invariant statistic, so they
  commute with it; so do Gemma's (1 + w) norms and its scaled embeddings.

What does not fold: a per-layer permutation of q/k/v/gate/up inputs. It must be carried as an
index (x[..., perm] before the Linear) and the caller un-permutes the columns for a dense export.
"""
from __future__ import annotations

import torch
from torch import nn

from compress.model.layers import decoder_layers
from compress.model.roles import HEAD_NORMS, RESIDUAL_READERS, RESIDUAL_WRITERS

__all__ = ["is_permutation", "inverse", "fold_mlp", "attention_values_perm", "fold_attention_values",
           "fold_residual"]



def is_permutation(perm, n: int) -> bool:
    """True when `perm` is a 1-D integer tensor holding each of 0..n-1 exactly once."""
    perm = torch.as_tensor(perm)
    if perm.dim() != 1 or perm.numel() != n or perm.is_floating_point() or perm.dtype == torch.bool:
        return False
    return torch.equal(perm.sort().values.cpu(), torch.arange(n, dtype=perm.dtype))


def _checked(perm, n: int, what: str) -> torch.Tensor:
    if not is_permutation(perm, n):
        raise ValueError(f"{what}: expected a permutation of {n} channels, got {_describe(perm)}")
    return torch.as_tensor(perm).long()


def _describe(perm) -> str:
    perm = torch.as_tensor(perm)
    return f"{perm.dtype} tensor of shape {tuple(perm.shape)}"


def inverse(perm) -> torch.Tensor:
    """The permutation that undoes `perm`: x[..., perm][..., inverse(perm)] == x."""
    perm = _checked(perm, torch.as_tensor(perm).numel(), "inverse")
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv


def _permute_(param: torch.Tensor, perm: torch.Tensor, dim: int) -> None:
    # copy_ keeps the Parameter and its storage, so tied or externally held references stay valid
    param.copy_(param.index_select(dim, perm.to(param.device)))


def _permute_outputs_(linear: nn.Linear, perm: torch.Tensor) -> None:
    _permute_(linear.weight, perm, 0)
    if linear.bias is not None:
        _permute_(linear.bias, perm, 0)


@torch.no_grad()
def fold_mlp(gate_proj: nn.Linear | None, up_proj: nn.Linear, down_proj: nn.Linear, perm) -> None:
    """Permute down_proj's input columns and the matching gate/up output rows (gate may be None)."""
    perm = _checked(perm, down_proj.in_features, "fold_mlp")
    producers = [m for m in (gate_proj, up_proj) if m is not None]
    for m in producers:
        if m.out_features != down_proj.in_features:
            raise ValueError(f"fold_mlp: producer has {m.out_features} outputs, "
                             f"down_proj reads {down_proj.in_features}")
    for m in producers:
        _permute_outputs_(m, perm)
    _permute_(down_proj.weight, perm, 1)


def _check_heads(head_perms, num_heads: int, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    if num_kv_heads <= 0 or num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    head_perms = torch.as_tensor(head_perms)
    if tuple(head_perms.shape) != (num_kv_heads, head_dim):
        raise ValueError(f"head_perms: expected shape {(num_kv_heads, head_dim)}, "
                         f"got {tuple(head_perms.shape)}")
    for g, row in enumerate(head_perms):
        _checked(row, head_dim, f"head_perms[{g}]")
    return head_perms.long()


def _blocks(head_perms: torch.Tensor, kv_of_block: torch.Tensor, head_dim: int) -> torch.Tensor:
    offsets = torch.arange(kv_of_block.numel(), device=head_perms.device).unsqueeze(1) * head_dim
    return (offsets + head_perms[kv_of_block.to(head_perms.device)]).reshape(-1)


def attention_values_perm(head_perms, num_heads: int, num_kv_heads: int, head_dim: int) -> torch.Tensor:
    """The o_proj input permutation (num_heads * head_dim) that per-KV-head `head_perms` produce."""
    head_perms = _check_heads(head_perms, num_heads, num_kv_heads, head_dim)
    kv_of_head = torch.arange(num_heads) // (num_heads // num_kv_heads)
    return _blocks(head_perms, kv_of_head, head_dim)


@torch.no_grad()
def fold_attention_values(v_proj: nn.Linear, o_proj: nn.Linear, head_perms, num_heads: int,
                          num_kv_heads: int, head_dim: int) -> None:
    """Permute head_dim within each KV head of v_proj's outputs and, to match, o_proj's input columns."""
    head_perms = _check_heads(head_perms, num_heads, num_kv_heads, head_dim)
    if v_proj.out_features != num_kv_heads * head_dim:
        raise ValueError(f"v_proj has {v_proj.out_features} outputs, expected {num_kv_heads}x{head_dim}")
    if o_proj.in_features != num_heads * head_dim:
        raise ValueError(f"o_proj reads {o_proj.in_features} inputs, expected {num_heads}x{head_dim}")
    _permute_outputs_(v_proj, _blocks(head_perms, torch.arange(num_kv_heads), head_dim))
    _permute_(o_proj.weight, attention_values_perm(head_perms, num_heads, num_kv_heads, head_dim), 1)


def _linear_role(name: str) -> str | None:
    last = name.rsplit(".", 1)[-1]
    if last in RESIDUAL_READERS:
        return "reads"
    if last in RESIDUAL_WRITERS:
        return "writes"
    return None


def _residual_sites(model: nn.Module, hidden: int) -> list[tuple[torch.Tensor, int]]:
    """(parameter, dim) pairs to permute; raises before anything changes if a parameter is not understood."""
    sites: list[tuple[torch.Tensor, int]] = []
    understood: set[int] = set()
    inside = {id(m) for _, layer in decoder_layers(model) for m in layer.modules()}
    output_embeddings = model.get_output_embeddings()

    for name, module in model.named_modules():
        own = dict(module.named_parameters(recurse=False))
        if not own:
            continue
        last = name.rsplit(".", 1)[-1]
        weight, bias = own.get("weight"), own.get("bias")
        if isinstance(module, nn.Embedding):
            if module.embedding_dim == hidden:
                sites.append((weight, 1))
        elif module is output_embeddings and isinstance(module, nn.Linear):
            if module.in_features != hidden:
                raise ValueError(f"{name}: output embeddings read {module.in_features}, not {hidden}")
            sites.append((weight, 1))
        elif isinstance(module, nn.Linear):
            role = _linear_role(name)
            if role is None or id(module) not in inside:
                where = "decoder layer" if id(module) in inside else "model outside the decoder layers"
                raise ValueError(f"{name}: Linear in the {where} with no known residual role; reader "
                                 f"names are {sorted(RESIDUAL_READERS)}, writers {sorted(RESIDUAL_WRITERS)}")
            if role == "reads":
                if module.in_features != hidden:
                    raise ValueError(f"{name}: named as a residual reader but reads {module.in_features}")
                sites.append((weight, 1))
            else:
                if module.out_features != hidden:
                    raise ValueError(f"{name}: named as a residual writer but writes {module.out_features}")
                sites.extend((p, 0) for p in (weight, bias) if p is not None)
        elif last in HEAD_NORMS:
            pass
        elif weight is not None and weight.dim() == 1 and weight.numel() == hidden:
            norm_params = [p for p in (weight, bias) if p is not None and p.shape == weight.shape]
            sites.extend((p, 0) for p in norm_params)
            understood.update(id(p) for p in norm_params)
            continue
        else:
            continue
        understood.update(id(p) for p in own.values())

    for name, param in model.named_parameters():
        if id(param) not in understood:
            raise ValueError(f"{name}: parameter of shape {tuple(param.shape)} has no known residual role")
    return sites


@torch.no_grad()
def fold_residual(model: nn.Module, perm) -> None:
    """Permute the hidden (residual) dimension of the whole model; its outputs do not change.

    Touched: columns of every Embedding of width hidden and of the output embeddings (a tied
    lm_head is permuted once); every 1-D weight (and bias) of size hidden outside a Linear/Embedding,
    i.e. the norms (input/post-attention/final and Gemma-style pre/post-feedforward), except those
    named in HEAD_NORMS; input columns of decoder-layer Linears whose last name component is in
    RESIDUAL_READERS; output rows and bias of those in RESIDUAL_WRITERS. Any other Linear, or any
    parameter left over (fused expert tensors, say), raises ValueError with the model unchanged.
    """
    hidden = model.get_input_embeddings().embedding_dim
    perm = _checked(perm, hidden, "fold_residual")
    done: set[int] = set()
    for param, dim in _residual_sites(model, hidden):
        if id(param) in done:
            continue
        done.add(id(param))
        _permute_(param, perm, dim)
