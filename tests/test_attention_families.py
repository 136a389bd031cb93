"""Double Sparsity on other decoder families: calibration and the sparse attention run on Qwen2, Mistral and
Gemma3 (q/k norms, its own scaling); nothing dropped equals dense; Gemma3's sliding-window layers stay local."""
import pytest
import torch

SMALL = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)


def family_model(family: str, **extra):
    import transformers as tf

    torch.manual_seed(0)
    if family == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**SMALL)).eval()
    if family == "mistral":
        return tf.MistralForCausalLM(tf.MistralConfig(**SMALL, sliding_window=None)).eval()
    if family == "gemma3":
        values = {**SMALL, **extra}
        return tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**values, head_dim=16, sliding_window=8,
                                                         query_pre_attn_scalar=16)).eval()
    raise AssertionError(family)


def channel_file(model, path):
    from compress.attention.calibration.calibrate import channel_statistics, rank_channels
    from compress.attention.calibration.channels import read_channel_file, write_channel_file
    from compress.model.roles import HeadLayout

    windows = torch.randint(3, 320, (2, 24), generator=torch.Generator().manual_seed(0))
    stats = channel_statistics(model, windows, "qk")
    rows, kv_rows = rank_channels(stats, "qk", HeadLayout.of(model.config))
    write_channel_file(path, "qk", model.config, rows, kv_rows, stats.windows, stats.tokens)
    read_channel_file(path, model.config, len(rows))  # reads back against the same model
    return str(path)


@pytest.mark.parametrize("family", ["qwen2", "mistral", "gemma3"])
def test_nothing_dropped_equals_dense(family, tmp_path):
    from compress.attention.config import DoubleSparsity
    from compress.attention.evaluation.runtime import sparse_attention

    model = family_model(family, layer_types=["full_attention", "full_attention"]) if family == "gemma3" \
        else family_model(family)
    path = channel_file(model, tmp_path / "ch.json")
    ids = torch.randint(0, 320, (2, 30), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense = model(ids).logits
        with sparse_attention(model, DoubleSparsity(channel_file=path, channels="16", tokens="30", dense_layers=0,
                                                    labels="channels", position_prior=False), 30):
            same = model(ids).logits
        with sparse_attention(model, DoubleSparsity(channel_file=path, channels="1/4", tokens="1/6", dense_layers=0,
                                                    labels="channels", position_prior=False), 30):
            cut = model(ids).logits
    torch.testing.assert_close(same, dense, rtol=1e-5, atol=1e-5)
    assert (cut - dense).abs().max() > 1e-3


def test_gemma3_sliding_window_layers_stay_local(tmp_path):
    """Only global layers are made sparse: the rows the sparse path saw are those of the full-attention layers
    from dense_layers on; a dense_layers past every global layer leaves nothing sparse and is refused."""
    from compress.attention.config import DoubleSparsity
    from compress.attention.evaluation.runtime import sparse_attention
    from compress.errors import BadInput

    types = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    model = family_model("gemma3", num_hidden_layers=4, layer_types=types)
    path = channel_file(model, tmp_path / "ch.json")
    ids = torch.randint(0, 320, (1, 20), generator=torch.Generator().manual_seed(1))
    settings = lambda first: DoubleSparsity(channel_file=path, channels="1/4", tokens="4", dense_layers=first,  # noqa: E731
                                            labels="channels", position_prior=False)
    with torch.no_grad():
        dense = model(ids).logits
        with sparse_attention(model, settings(0), 20) as state:
            cut = model(ids).logits
        with sparse_attention(model, settings(2), 20) as later:  # layer 1 dense, layer 3 sparse
            model(ids)
    assert state.rows == 2 * 20 * 2  # 2 global layers × 20 queries × 2 KV heads
    assert later.rows == 1 * 20 * 2
    assert (cut - dense).abs().max() > 1e-3
    with pytest.raises(BadInput, match="leaves none"):
        with sparse_attention(model, settings(4), 20):
            pass
