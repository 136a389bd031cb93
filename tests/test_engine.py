"""The layer-sequential engine against the model's own forward pass."""
import pytest
import torch

from compress.calibrate.collectors import collect_inputs
from compress.calibrate.engine import capture_layer_inputs, walk_layers
from compress.errors import BadInput
from compress.model.layers import decoder_layers, target_linears
from compress.prune.apply import PruneConfig, prune_model
from tests.conftest import tiny_llama_config


def tiny(seed=0, **overrides):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(**overrides)).eval()


def test_walking_unchanged_layers_reproduces_hidden_states():
    model = tiny()
    ids = torch.randint(0, 320, (6, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(input_ids=ids, output_hidden_states=True).hidden_states
    layers = decoder_layers(model)
    inputs = capture_layer_inputs(model, [l for _, l in layers], list(ids.split(4)), torch.device("cpu"))
    assert torch.allclose(torch.cat(inputs.hidden), reference[0])
    steps = walk_layers(layers, inputs, torch.device("cpu"), lambda *a: {})
    # hidden_states[-1] has the final norm applied; compare the input to the last layer instead
    inputs2 = capture_layer_inputs(model, [l for _, l in layers], list(ids.split(4)), torch.device("cpu"))
    walk_layers(layers[:1], inputs2, torch.device("cpu"), lambda *a: {})
    assert torch.allclose(torch.cat(inputs2.hidden), reference[1], atol=1e-5)


def test_shared_inputs_share_one_collector():
    model = tiny()
    name, layer = decoder_layers(model)[0]
    linears = target_linears(layer, name)
    x = torch.randn(2, 8, 64)
    pos = torch.arange(8).unsqueeze(0)
    emb = model.model.rotary_emb(x, pos)
    with collect_inputs(linears, "input_norm") as stats:
        for _ in range(3):
            layer(x, position_embeddings=emb, position_ids=pos)
    q, k, v = (stats[f"{name}.self_attn.{p}_proj"] for p in "qkv")
    gate, up = (stats[f"{name}.mlp.{p}_proj"] for p in ("gate", "up"))
    assert q is k is v and gate is up and q is not gate
    assert q.tokens == 3 * 16  # counted once per batch, not once per consumer
    normed = layer.input_layernorm(x)
    assert torch.allclose(q.sum_sq, 3 * normed.pow(2).sum((0, 1)), rtol=1e-5)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "ria"])
def test_prune_model_hits_the_pattern_and_is_deterministic(method):
    ids = torch.randint(0, 320, (8, 32), generator=torch.Generator().manual_seed(1))
    results = []
    for _ in range(2):
        model = tiny()
        result = prune_model(model, PruneConfig(method=method, pattern="2:4"), ids)
        results.append(model.state_dict())
        assert result.overall_sparsity == pytest.approx(0.5)
        for _, layer in decoder_layers(model):
            for linear in target_linears(layer, "x").values():
                assert ((linear.weight != 0).view(linear.out_features, -1, 4).sum(-1) == 2).all()
        assert model.lm_head.weight.ne(0).all() and model.model.embed_tokens.weight.ne(0).all()
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_targets_and_ignore_select_linears():
    ids = torch.randint(0, 320, (4, 32))
    model = tiny()
    prune_model(model, PruneConfig(method="wanda", pattern="2:4", targets=r"mlp\.", ignore="down_proj"), ids)
    layer = model.model.layers[0]
    assert (layer.mlp.gate_proj.weight == 0).float().mean() == 0.5
    assert (layer.mlp.down_proj.weight != 0).all() and (layer.self_attn.q_proj.weight != 0).all()


def test_sparsegpt_layer_error_below_wanda():
    ids = torch.randint(0, 320, (16, 64), generator=torch.Generator().manual_seed(2))
    errors = {}
    for method in ("wanda", "sparsegpt"):
        result = prune_model(tiny(), PruneConfig(method=method, pattern="2:4"), ids)
        errors[method] = result.steps[0].relative_error
    assert errors["sparsegpt"] < errors["wanda"]


@pytest.mark.parametrize("arch", ["qwen2", "mistral", "gemma"])
def test_other_architectures(arch):
    import transformers

    cfg_cls, model_cls = {
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM),
    }[arch]
    torch.manual_seed(0)
    cfg = cfg_cls(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128)
    model = model_cls(cfg).eval()
    ids = torch.randint(0, 320, (4, 32))
    result = prune_model(model, PruneConfig(method="sparsegpt", pattern="4:8"), ids)
    assert len(result.steps) == 2 and result.overall_sparsity == pytest.approx(0.5)
    assert all(s.relative_error is not None and s.relative_error < 1 for s in result.steps)


def test_no_decoder_layers_is_bad_input():
    with pytest.raises(BadInput, match="no decoder layers"):
        decoder_layers(torch.nn.Sequential(torch.nn.Linear(4, 4)))
