"""Double Sparsity decode kernels on a GPU against the PyTorch reference (fresh random inputs per case)."""
import zlib

import pytest
import torch

pytestmark = pytest.mark.gpu

# relative output error over the kernel's own set: fp16/bf16 probabilities in the P·V product
TOLERANCE = {torch.float16: 3e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("label_bits, selection", [(4, "radix"), (4, "topk-half"), (16, "radix"),
                                                   (16, "topk-half"), (16, "topk")])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("heads, kv_heads", [(32, 32), (32, 8), (8, 2)])
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("context, budget", [(777, 48), (5000, 312), (200, 512)])
def test_kernels_match_reference(label_bits, selection, dtype, heads, kv_heads, batch, context, budget):
    from compress.attention.bench import check_decode

    seed = zlib.crc32(repr((heads, kv_heads, batch, context, str(dtype), selection, label_bits)).encode()) % 10_000
    row = check_decode(batch, heads, kv_heads, context, 128, 8, budget, dtype, seed, selection=selection,
                       label_bits=label_bits)
    assert row["finite"] and row["selected_unique"] and row["selected_top_of_own_scores"]
    # float16 scores (topk-half, radix): their rounding (≤ 1e-3 of the largest) may reorder near-ties
    assert row["score_error"] < (1e-4 if selection == "topk" else 1e-3)
    # 4 bits: the evaluation path's codes, only each key's min and step rounded to float16 in the cache
    assert row["score_error_vs_evaluation"] < (5e-3 if label_bits == 4 else 1e-3)
    assert row["selected_within_tolerance"]  # only near-ties at the boundary may differ from the reference's top-T
    if selection == "topk":
        assert row["rows_with_set_equal_reference"] > 0.5
    assert row["output_error"] < TOLERANCE[dtype]
    if budget >= context:
        assert row["rows_with_set_equal_reference"] == 1.0


def _keys(scores: torch.Tensor) -> torch.Tensor:
    bits = scores.view(torch.int16).to(torch.int32) & 0xFFFF
    return torch.where(bits >= 0x8000, bits ^ 0xFFFF, bits | 0x8000)


@pytest.mark.parametrize("channels", [4, 8, 16])
@pytest.mark.parametrize("heads, kv_heads, context", [(32, 32, 70_000), (32, 8, 9_999)])
def test_packed_scores_and_histogram_match_pytorch(channels, heads, kv_heads, context):
    """The 4-bit scoring kernel equals PyTorch over the same packed cache, and counts its keys' high bytes."""
    from compress.attention import labels, select
    from compress.attention.bench import random_decode_inputs

    query, key, _, heavy = random_decode_inputs(2, heads, kv_heads, context, 128, channels, torch.float16,
                                                seed=channels)
    packed = labels.label_cache(key, heavy, 4)
    counters = select.new_counters(2 * kv_heads, "cuda")
    scores = labels.score_labels(query, packed, heavy, torch.float16, counters)
    group = heads // kv_heads
    q = torch.gather(query.float(), -1, heavy.repeat_interleave(group, 0)[None].expand(2, heads, -1).cuda())
    reference = torch.einsum("bkr,bknr->bkn", q.view(2, kv_heads, group, -1).sum(2),
                             labels.dequantize_labels(packed, channels))
    assert float((scores.float() - reference).abs().max() / reference.abs().max()) < 1e-3
    high = _keys(scores).view(2 * kv_heads, -1) >> 8
    expected = torch.stack([torch.bincount(row, minlength=256) for row in high])
    assert torch.equal(counters[:, :256], expected.to(torch.int32))


def test_all_tokens_equal_dense_sdpa():
    from compress.attention import decode
    from compress.attention.bench import dense_decode, random_decode_inputs

    query, key, value, heavy = random_decode_inputs(4, 32, 8, 3000, 128, 8, torch.float16, seed=3)
    labels = decode.label_cache(key, heavy, 4)
    out = decode.double_sparse_decode(query, key, value, labels, heavy, 3000, 128 ** -0.5)  # T = n: all tokens
    dense = dense_decode(query, key, value, 128 ** -0.5)
    assert float((out.float() - dense.float()).norm() / dense.float().norm()) < 3e-3
