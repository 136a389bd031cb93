"""Export a factorized model as a stock MoE checkpoint that `AutoModelForCausalLM.from_pretrained` loads
with no custom code, where the math is exact:

  llama, mistral  ->  mixtral; with shared neurons qwen2_moe (no q/k/v biases: Llama's attention), unless
                      a sliding window needs Mixtral
  qwen2           ->  qwen2_moe  (norm_topk_prob on; the shared neurons as its shared expert, or one neuron with
                      zero weights where there are none)
  qwen3           ->  qwen3_moe  (norm_topk_prob on)
Shared neurons: Qwen2-MoE's shared expert holds them, its gate's weight zero (sigmoid 0 = 1/2, so its down
projection is stored ×2: exact). Mixtral and Qwen3-MoE have no shared expert: the shared neurons are folded
into every expert (expert e = shared neurons + its own), unscaled: the renormalised top-k weights sum to 1,
so the shared part adds exactly once. The function is the same, but each of the k chosen experts recomputes
the shared neurons (k·S + k groups per token instead of S + k): compression.json says so.
Each MoE block keeps the router as mlp.gate (E, hidden) and the experts as experts.gate_up_proj
(E, 2m, hidden) and experts.down_proj (E, hidden, m), the fold (k or E) already in down. These
models route as FactorizedMLP does (softmax, top-k, renormalised), so the checkpoint computes the
in-memory model's function. Gemma/Gemma3 have no stock MoE counterpart and are refused for now.
The model is written by transformers' own save_pretrained (which picks the on-disk expert layout of the
installed version) inside compress's atomic directory.
"""
from __future__ import annotations

from pathlib import Path

import torch

from compress.errors import BadInput
from compress.export.atomic import atomic_directory
from compress.export.marker import write_manifest
from compress.factorize.moe import FactorizedMLP

__all__ = ["EXPORTS", "check_exportable", "export_target", "moe_config", "save_moe"]

EXPORTS = {"llama": "mixtral", "mistral": "mixtral", "qwen2": "qwen2_moe", "qwen3": "qwen3_moe"}
_SHARED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
           "hidden_act", "max_position_embeddings", "initializer_range", "rms_norm_eps", "pad_token_id",
           "bos_token_id", "eos_token_id", "tie_word_embeddings", "sliding_window", "use_sliding_window",
           "max_window_layers", "layer_types", "attention_dropout", "attention_bias", "rope_parameters",
           "rope_theta", "rope_scaling")
SHARED_EXPERT = 1  # qwen2_moe always adds a shared expert: one neuron, all zeros, adds exactly 0


def _expert_settings(target: str, experts: int, top_k: int, m: int, dense_intermediate: int) -> dict:
    if target == "mixtral":
        return {"intermediate_size": m, "num_local_experts": experts, "num_experts_per_tok": top_k,
                "router_jitter_noise": 0.0}
    settings = {"intermediate_size": dense_intermediate, "moe_intermediate_size": m, "num_experts": experts,
                "num_experts_per_tok": top_k, "norm_topk_prob": True, "decoder_sparse_step": 1, "mlp_only_layers": []}
    if target == "qwen2_moe":
        settings.update(shared_expert_intermediate_size=SHARED_EXPERT, qkv_bias=True)
    return settings


def check_exportable(config) -> str:
    """The stock MoE model type the dense model's family exports to without shared neurons, or BadInput."""
    family = getattr(config, "model_type", None)
    if family not in EXPORTS:
        raise BadInput(f"factorize exports only {', '.join(EXPORTS)} models to a stock MoE checkpoint (got "
                       f"{family}); run without --out to evaluate in memory", key="out")
    if getattr(config, "mlp_bias", False) or (EXPORTS[family] == "mixtral" and getattr(config, "attention_bias", False)):
        raise BadInput(f"{family} with biases in attention or MLP has no exact {EXPORTS[family]} equivalent", key="out")
    if (getattr(config, "pretraining_tp", 1) or 1) != 1:
        raise BadInput("pretraining_tp != 1 is not supported by the MoE export", key="out")
    return EXPORTS[family]


def export_target(config, shared: bool) -> str:
    """The stock MoE type of a factorized model of this config, with or without shared neurons."""
    target = check_exportable(config)
    if shared and target == "mixtral" and not getattr(config, "sliding_window", None):
        return "qwen2_moe"
    return target


def _factorized(model) -> dict[str, FactorizedMLP]:
    moes = {name: m for name, m in model.named_modules() if isinstance(m, FactorizedMLP)}
    if not moes:
        raise BadInput("the model has no factorized MLPs to export as a mixture of experts")
    widths = {m.shared_width for m in moes.values()}
    if len(widths) > 1:
        raise BadInput("the factorized MLPs have shared parts of different widths: no stock MoE config holds them")
    return moes


def folds_shared(model) -> bool:
    """The shared neurons go into every expert (a stock MoE without a shared expert)."""
    moes = _factorized(model)
    shared = next(iter(moes.values())).shared_width > 0
    return shared and export_target(model.config, True) != "qwen2_moe"


def moe_config(model):
    """The stock MoE config of a factorized Llama, Mistral, Qwen2 or Qwen3 model."""
    from transformers import AutoConfig

    first = next(iter(_factorized(model).values()))
    target = export_target(model.config, first.shared_width > 0)
    dense = model.config.to_dict()
    values = {key: dense[key] for key in _SHARED if key in dense and dense[key] is not None}
    width = first.down.shape[2] + (first.shared_width if folds_shared(model) else 0)
    values.update(_expert_settings(target, first.num_experts, first.top_k, width, model.config.intermediate_size),
                  output_router_logits=False)
    if target == "qwen2_moe":
        values["shared_expert_intermediate_size"] = first.shared_width or SHARED_EXPERT
        values["qkv_bias"] = check_exportable(model.config) == "qwen2_moe"  # Llama/Mistral attention has none
    return AutoConfig.for_model(target, **values)


def moe_state_dict(model) -> dict[str, torch.Tensor]:
    """The dense model's tensors with each FactorizedMLP renamed to Mixtral's keys."""
    moes = _factorized(model)
    fold = folds_shared(model)
    qwen2 = moe_config(model).model_type == "qwen2_moe"
    state = {key: tensor for key, tensor in model.state_dict().items()
             if not any(key.startswith(p + ".") for p in moes)}
    for prefix, moe in moes.items():
        gate_up, down = moe.gate_up.detach(), moe.down.detach()
        if fold:  # every expert: [shared gate; own gate; shared up; own up], down [shared, own]
            experts, hidden = gate_up.shape[0], gate_up.shape[2]
            shared_gate, shared_up = (part.expand(experts, -1, -1) for part in moe.shared_gate_up.detach()[None].chunk(2, 1))
            gate, up = gate_up.chunk(2, dim=1)
            gate_up = torch.cat([shared_gate, gate, shared_up, up], dim=1)
            down = torch.cat([moe.shared_down.detach().expand(experts, hidden, -1), down], dim=2)
        state.update({f"{prefix}.experts.gate_up_proj": gate_up.contiguous(), f"{prefix}.experts.down_proj": down.contiguous(),
                      f"{prefix}.gate.weight": moe.router.weight.detach()})
        if qwen2:
            state.update(_shared_expert(prefix, moe))
    return state


def _shared_expert(prefix: str, moe: FactorizedMLP) -> dict[str, torch.Tensor]:
    """Qwen2-MoE's shared expert: the shared neurons (down ×2 for the zero gate's sigmoid 1/2), or one zero neuron."""
    hidden, like = moe.gate_up.shape[2], dict(dtype=moe.gate_up.dtype, device=moe.gate_up.device)
    if moe.shared_width:
        gate, up = moe.shared_gate_up.detach().chunk(2, dim=0)
        down = moe.shared_down.detach() * 2
    else:
        gate, up, down = (torch.zeros(shape, **like) for shape in ((SHARED_EXPERT, hidden), (SHARED_EXPERT, hidden),
                                                                  (hidden, SHARED_EXPERT)))
    return {f"{prefix}.shared_expert.gate_proj.weight": gate.contiguous(),
            f"{prefix}.shared_expert.up_proj.weight": up.contiguous(),
            f"{prefix}.shared_expert.down_proj.weight": down.contiguous(),
            f"{prefix}.shared_expert_gate.weight": torch.zeros(1, hidden, **like)}


def build_moe_model(model):
    """The stock MoE model holding the factorized model's weights (the model itself is not changed)."""
    from transformers import AutoModelForCausalLM

    config = moe_config(model)
    with torch.device("meta"):
        moe = AutoModelForCausalLM.from_config(config)
    state = moe_state_dict(model)
    missing, unexpected = moe.load_state_dict(state, strict=False, assign=True)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise BadInput(f"the factorized model does not map onto {config.model_type} (missing {sorted(missing)[:3]}, "
                       f"unexpected {sorted(unexpected)[:3]})")
    if tied:
        moe.tie_weights()
    for name, buffer in list(moe.named_buffers()):
        if buffer.is_meta:  # non-persistent buffers (rotary inv_freq) are rebuilt by a fresh module
            parent, _, child = name.rpartition(".")
            owner = moe.get_submodule(parent)
            fresh = type(owner)(config=config)
            owner.register_buffer(child, getattr(fresh, child).to(buffer.dtype), persistent=False)
    return moe.eval()


def save_moe(model, tokenizer, out: str | Path, manifest: dict, force: bool = False,
             extra_files: dict[str, str] | None = None) -> Path:
    """Write the factorized model as a stock MoE checkpoint with compression.json, atomically."""
    moe = build_moe_model(model)
    if folds_shared(model):
        first = next(iter(_factorized(model).values()))
        shared, k, width = first.shared_width, first.top_k, first.down.shape[2]
        manifest = {**manifest, "shared_neurons": (
            f"{moe.config.model_type} has no shared expert: each layer's {shared} shared neurons are in every expert, "
            f"so the {k} chosen experts each recompute them: {k * (shared + width)} FFN neurons run per token "
            f"instead of {shared + k * width}")}
    with atomic_directory(out, force) as tmp:
        moe.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_manifest(tmp, manifest, extra_files)
    return Path(out)
