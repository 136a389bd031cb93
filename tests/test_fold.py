"""Folding channel permutations into producers leaves the model's outputs unchanged."""
import pytest
import torch
from torch import nn

from compress.model.layers import decoder_layers
from compress.permute.fold import (attention_values_perm, fold_attention_values, fold_mlp, fold_residual,
                                   inverse, is_permutation)

SIZES = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
             initializer_range=0.1, attn_implementation="eager")
ARCHS = ["llama", "qwen2", "mistral", "gemma", "gemma3"]


def tiny(arch: str, seed: int = 0):
    import transformers as tf

    config_cls, model_cls, extra = {
        "llama": (tf.LlamaConfig, tf.LlamaForCausalLM, {}),
        "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM, {}),
        "mistral": (tf.MistralConfig, tf.MistralForCausalLM, {}),
        "gemma": (tf.GemmaConfig, tf.GemmaForCausalLM, dict(head_dim=16, tie_word_embeddings=True)),
        "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM, dict(head_dim=16)),
    }[arch]
    torch.manual_seed(seed)
    model = model_cls(config_cls(**SIZES, **extra)).float().eval()
    with torch.no_grad():
        # norms start at 1 (or 0 for Gemma's 1 + w) and biases at 0: make them distinguishable per channel
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.3 * torch.randn_like(param))
    return model


def logits(model, seed: int = 0):
    ids = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids).logits


def shape(model):
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return config.num_attention_heads, config.num_key_value_heads, head_dim


def random_perm(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=gen)


def fold_everywhere(model, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    num_heads, num_kv, head_dim = shape(model)
    for _, layer in decoder_layers(model):
        mlp, attn = layer.mlp, layer.self_attn
        fold_mlp(mlp.gate_proj, mlp.up_proj, mlp.down_proj, random_perm(mlp.down_proj.in_features, gen))
        head_perms = torch.stack([random_perm(head_dim, gen) for _ in range(num_kv)])
        fold_attention_values(attn.v_proj, attn.o_proj, head_perms, num_heads, num_kv, head_dim)
    fold_residual(model, random_perm(model.config.hidden_size, gen))


@pytest.mark.parametrize("arch", ARCHS)
def test_folding_every_site_keeps_logits(arch):
    model = tiny(arch)
    before = logits(model)
    weight_before = model.model.layers[0].mlp.down_proj.weight.clone()
    fold_everywhere(model)
    assert not torch.equal(model.model.layers[0].mlp.down_proj.weight, weight_before)
    torch.testing.assert_close(logits(model), before, atol=1e-5, rtol=1e-5)


def test_a_consumer_permuted_without_its_producer_changes_logits():
    # guards the test above against models too smooth to notice a wrong fold
    model = tiny("llama")
    before = logits(model)
    down = model.model.layers[0].mlp.down_proj
    with torch.no_grad():
        down.weight.copy_(down.weight[:, torch.randperm(128, generator=torch.Generator().manual_seed(0))])
    assert (logits(model) - before).abs().max() > 1e-3


def test_fold_mlp_gives_consumers_the_permuted_order():
    mlp = tiny("qwen2").model.layers[0].mlp
    gate, up, down = (mlp.gate_proj.weight.clone(), mlp.up_proj.weight.clone(), mlp.down_proj.weight.clone())
    perm = torch.randperm(128, generator=torch.Generator().manual_seed(3))
    fold_mlp(mlp.gate_proj, mlp.up_proj, mlp.down_proj, perm)
    assert torch.equal(mlp.down_proj.weight, down[:, perm])
    assert torch.equal(mlp.gate_proj.weight, gate[perm])
    assert torch.equal(mlp.up_proj.weight, up[perm])


def test_fold_attention_values_matches_attention_values_perm():
    attn = tiny("qwen2").model.layers[0].self_attn  # v_proj has a bias
    v_weight, v_bias, o_weight = attn.v_proj.weight.clone(), attn.v_proj.bias.clone(), attn.o_proj.weight.clone()
    gen = torch.Generator().manual_seed(4)
    head_perms = torch.stack([torch.randperm(16, generator=gen) for _ in range(2)])
    fold_attention_values(attn.v_proj, attn.o_proj, head_perms, 4, 2, 16)
    v_perm = torch.cat([head_perms[0], 16 + head_perms[1]])
    assert torch.equal(attn.v_proj.weight, v_weight[v_perm])
    assert torch.equal(attn.v_proj.bias, v_bias[v_perm])
    assert torch.equal(attn.o_proj.weight, o_weight[:, attention_values_perm(head_perms, 4, 2, 16)])


def test_attention_values_perm_keeps_each_head_block():
    gen = torch.Generator().manual_seed(5)
    head_perms = torch.stack([torch.randperm(16, generator=gen) for _ in range(2)])
    perm = attention_values_perm(head_perms, num_heads=4, num_kv_heads=2, head_dim=16)
    assert is_permutation(perm, 64)
    assert torch.equal(perm // 16, torch.arange(4).repeat_interleave(16))
    offsets = (perm % 16).view(4, 16)
    # query heads 0,1 share KV head 0 and heads 2,3 share KV head 1
    assert torch.equal(offsets, head_perms[torch.tensor([0, 0, 1, 1])])
    # a free permutation of o_proj's inputs moves channels across heads: it cannot be folded
    free = torch.randperm(64, generator=gen)
    assert not torch.equal(free // 16, torch.arange(4).repeat_interleave(16))


def test_tied_embeddings_are_permuted_once():
    model = tiny("gemma")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    embed = model.model.embed_tokens.weight.clone()
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(6))
    fold_residual(model, perm)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.equal(model.model.embed_tokens.weight, embed[:, perm])


def test_head_dim_norms_are_left_alone():
    model = tiny("gemma3")
    q_norm = model.model.layers[0].self_attn.q_norm.weight.clone()
    fold_residual(model, torch.randperm(64, generator=torch.Generator().manual_seed(7)))
    assert torch.equal(model.model.layers[0].self_attn.q_norm.weight, q_norm)


def test_is_permutation_and_inverse_round_trip():
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(8))
    inv = inverse(perm)
    assert is_permutation(perm, 50) and is_permutation(inv, 50)
    assert torch.equal(perm[inv], torch.arange(50)) and torch.equal(inv[perm], torch.arange(50))
    assert torch.equal(inverse(inv), perm)
    x = torch.randn(3, 50)
    assert torch.equal(x[:, perm][:, inv], x)
    assert not is_permutation(torch.tensor([0, 1, 1]), 3)
    assert not is_permutation(torch.tensor([0, 1, 3]), 3)
    assert not is_permutation(torch.arange(4), 3)
    assert not is_permutation(torch.arange(4.0), 4)
    assert not is_permutation(torch.arange(4).view(2, 2), 4)
    with pytest.raises(ValueError):
        inverse(torch.tensor([0, 0, 2]))


def _duplicate(n: int) -> torch.Tensor:
    perm = torch.arange(n)
    perm[1] = 0
    return perm


def test_invalid_permutations_raise_and_change_nothing():
    model = tiny("llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    layer = model.model.layers[0]
    mlp, attn = layer.mlp, layer.self_attn
    with pytest.raises(ValueError):
        fold_mlp(mlp.gate_proj, mlp.up_proj, mlp.down_proj, _duplicate(128))
    with pytest.raises(ValueError):
        fold_mlp(mlp.gate_proj, mlp.up_proj, mlp.down_proj, torch.arange(64))
    with pytest.raises(ValueError):
        fold_attention_values(attn.v_proj, attn.o_proj, torch.stack([_duplicate(16), torch.arange(16)]), 4, 2, 16)
    with pytest.raises(ValueError):
        fold_attention_values(attn.v_proj, attn.o_proj, torch.arange(16).repeat(4, 1), 4, 2, 16)
    with pytest.raises(ValueError):
        attention_values_perm(torch.stack([torch.arange(16), _duplicate(16)]), 4, 2, 16)
    with pytest.raises(ValueError):
        fold_residual(model, _duplicate(64))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_unknown_linear_in_a_decoder_layer_raises_and_changes_nothing():
    model = tiny("llama")
    model.model.layers[1].mlp.mystery = nn.Linear(64, 64)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="mystery"):
        fold_residual(model, torch.randperm(64))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("kind", ["heuristic", "global"])
def test_pruning_permutations_fold_exactly(kind):
    """What prune --permute heuristic|global chose folds at the mlp and heads sites without changing the model;
    afterwards those consumers are N:M in memory order and only the index sites remain."""
    from compress.model.roles import HeadLayout
    from compress.permute import fold_into_model
    from compress.prune.apply import PruneConfig, prune_model

    model = tiny("llama")
    ids = torch.randint(0, 320, (8, 32), generator=torch.Generator().manual_seed(2))
    config = PruneConfig(method="wanda", pattern="2:4", permute=kind, perm_block_size=16, perm_iters=8,
                         perm_tokens=64)
    result = prune_model(model, config, ids)
    before = logits(model)
    remaining = fold_into_model(model, dict(result.permutations), result.permutation_sites,
                                HeadLayout.of(model.config))
    torch.testing.assert_close(logits(model), before, atol=1e-5, rtol=1e-5)
    folded = set(result.permutations) - set(remaining)
    assert folded == {n for n, site in result.permutation_sites.items() if site in ("mlp", "heads")}
    assert all(result.permutation_sites[n] == "index" for n in remaining)
    for name in folded:
        weight = model.get_submodule(name).weight
        assert ((weight != 0).view(weight.shape[0], -1, 4).sum(-1) == 2).all(), name
