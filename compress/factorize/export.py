"""Export a factorized model as a stock MoE checkpoint that `AutoModelForCausalLM.from_pretrained` loads
with no custom code, where the math is exact:

  llama, mistral  ->  mixtral
  qwen2           ->  qwen2_moe  (norm_topk_prob on; a shared expert of one neuron with zero weights and gate)
  qwen3           ->  qwen3_moe  (norm_topk_prob on)
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

__all__ = ["EXPORTS", "check_exportable", "moe_config", "save_moe"]

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
    """The stock MoE model type the dense model's family exports to, or BadInput."""
    family = getattr(config, "model_type", None)
    if family not in EXPORTS:
        raise BadInput(f"factorize exports only {', '.join(EXPORTS)} models to a stock MoE checkpoint (got "
                       f"{family}); run without --out to evaluate in memory", key="out")
    if getattr(config, "mlp_bias", False) or (EXPORTS[family] == "mixtral" and getattr(config, "attention_bias", False)):
        raise BadInput(f"{family} with biases in attention or MLP has no exact {EXPORTS[family]} equivalent", key="out")
    if (getattr(config, "pretraining_tp", 1) or 1) != 1:
        raise BadInput("pretraining_tp != 1 is not supported by the MoE export", key="out")
    return EXPORTS[family]


def moe_config(model):
    """The stock MoE config of a factorized Llama, Mistral, Qwen2 or Qwen3 model."""
    from transformers import AutoConfig

    target = check_exportable(model.config)
    moes = [m for m in model.modules() if isinstance(m, FactorizedMLP)]
    if not moes:
        raise BadInput("the model has no factorized MLPs to export as a mixture of experts")
    first = moes[0]
    dense = model.config.to_dict()
    values = {key: dense[key] for key in _SHARED if key in dense and dense[key] is not None}
    values.update(_expert_settings(target, first.num_experts, first.top_k, first.down.shape[2],
                                   model.config.intermediate_size), output_router_logits=False)
    return AutoConfig.for_model(target, **values)


def moe_state_dict(model) -> dict[str, torch.Tensor]:
    """The dense model's tensors with each FactorizedMLP renamed to Mixtral's keys."""
    renames = {"gate_up": "experts.gate_up_proj", "down": "experts.down_proj", "router.weight": "gate.weight"}
    moes = {name: m for name, m in model.named_modules() if isinstance(m, FactorizedMLP)}
    state = {}
    for key, tensor in model.state_dict().items():
        prefix = next((p for p in moes if key.startswith(p + ".")), None)
        if prefix is not None:
            key = f"{prefix}.{renames[key[len(prefix) + 1:]]}"
        state[key] = tensor
    if check_exportable(model.config) == "qwen2_moe":
        for prefix, moe in moes.items():
            hidden, zeros = moe.gate_up.shape[2], dict(dtype=moe.gate_up.dtype, device=moe.gate_up.device)
            for name, shape in (("gate_proj", (SHARED_EXPERT, hidden)), ("up_proj", (SHARED_EXPERT, hidden)),
                                ("down_proj", (hidden, SHARED_EXPERT))):
                state[f"{prefix}.shared_expert.{name}.weight"] = torch.zeros(shape, **zeros)
            state[f"{prefix}.shared_expert_gate.weight"] = torch.zeros(1, hidden, **zeros)
    return state


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
    with atomic_directory(out, force) as tmp:
        moe.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_manifest(tmp, manifest, extra_files)
    return Path(out)
