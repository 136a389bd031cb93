"""Collectors on module outputs and on post-RoPE q/k (through the attention-function registry), checked
against the same quantities computed independently from the layer's own weights."""
import pytest
import torch

from compress.calibrate.attention import capture_attention, collect_qk
from compress.calibrate.collectors import collect_outputs
from tests.conftest import tiny_llama_config


def tiny(implementation: str):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config())
    model.config._attn_implementation = implementation
    return model.eval()


def reference_qk(model, ids, layer_index: int):
    """q and k of one layer after RoPE, recomputed from its inputs and weights."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    captured = {}
    layer = model.model.layers[layer_index]
    handle = layer.self_attn.register_forward_pre_hook(
        lambda m, args, kwargs: captured.update(h=kwargs["hidden_states"], pe=kwargs["position_embeddings"]),
        with_kwargs=True)
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    attn, hidden = layer.self_attn, captured["h"]
    shape = (*hidden.shape[:-1], -1, attn.head_dim)
    q = attn.q_proj(hidden).view(shape).transpose(1, 2)
    k = attn.k_proj(hidden).view(shape).transpose(1, 2)
    return apply_rotary_pos_emb(q, k, *captured["pe"])


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_post_rope_qk_through_the_attention_registry(implementation):
    model = tiny(implementation)
    ids = torch.randint(0, 320, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = model(input_ids=ids).logits
    seen = {}
    attention = {f"layer{i}": layer.self_attn for i, layer in enumerate(model.model.layers)}
    with torch.no_grad(), capture_attention(attention, lambda name, q, k: seen.setdefault(name, (q, k))):
        captured_logits = model(input_ids=ids).logits
    assert model.config._attn_implementation == implementation  # restored
    assert torch.equal(plain, captured_logits)  # the wrapped implementation computes the same
    for index in range(2):
        q_ref, k_ref = reference_qk(model, ids, index)
        q, k = seen[f"layer{index}"]
        torch.testing.assert_close(q, q_ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(k, k_ref, rtol=0, atol=1e-6)


def test_collect_qk_means_and_output_collectors():
    model = tiny("sdpa")
    ids = torch.randint(0, 320, (3, 16), generator=torch.Generator().manual_seed(2))
    layer = model.model.layers[1]
    with torch.no_grad(), collect_qk({"attn": layer.self_attn}) as qk, \
            collect_outputs({"up": layer.mlp.up_proj}, "channel_mean_abs") as outputs:
        model(input_ids=ids)
    q_ref, k_ref = reference_qk(model, ids, 1)
    expected_q = q_ref.abs().transpose(1, 2).reshape(-1, q_ref.shape[1] * q_ref.shape[-1]).double().mean(0)
    expected_k = k_ref.abs().transpose(1, 2).reshape(-1, k_ref.shape[1] * k_ref.shape[-1]).double().mean(0)
    torch.testing.assert_close(qk["attn"]["q"].mean(), expected_q, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(qk["attn"]["k"].mean(), expected_k, rtol=1e-6, atol=1e-9)
    assert qk["attn"]["k"].features == 2 * 16  # 2 KV heads × head_dim 16 (GQA: before the repeat)
    hidden = {}
    handle = layer.mlp.up_proj.register_forward_pre_hook(lambda m, args: hidden.update(x=args[0]))
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    up = layer.mlp.up_proj(hidden["x"]).abs().reshape(-1, 128).double().mean(0)
    torch.testing.assert_close(outputs["up"].mean(), up, rtol=1e-6, atol=1e-9)
