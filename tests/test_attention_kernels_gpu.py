"""Double Sparsity decode kernels on a GPU against the PyTorch reference (fresh random inputs per case)."""
import zlib

import pytest
import torch

pytestmark = pytest.mark.gpu

# relative output error over the kernel's own set: fp16/bf16 probabilities in the P·V product
TOLERANCE = {torch.float16: 3e-3, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("selection", ["topk-half", "radix", "topk"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("heads, kv_heads", [(32, 32), (32, 8), (8, 2)])
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("context, budget", [(777, 48), (5000, 312), (200, 512)])
def test_kernels_match_reference(selection, dtype, heads, kv_heads, batch, context, budget):
    from compress.attention.bench import check_decode

    seed = zlib.crc32(repr((heads, kv_heads, batch, context, str(dtype), selection)).encode()) % 10_000
    row = check_decode(batch, heads, kv_heads, context, 128, 8, budget, dtype, seed, selection=selection)
    assert row["finite"] and row["selected_unique"]
    # float16 scores (topk-half, radix): their rounding (≤ 1e-3 of the largest) may reorder near-ties
    assert row["score_error"] < (1e-4 if selection == "topk" else 1e-3)
    assert row["selected_within_tolerance"]  # only near-ties at the boundary may differ from the reference's top-T
    if selection == "topk":
        assert row["rows_with_set_equal_reference"] > 0.5
    assert row["output_error"] < TOLERANCE[dtype]
    if budget >= context:
        assert row["rows_with_set_equal_reference"] == 1.0


def test_all_tokens_equal_dense_sdpa():
    from compress.attention import decode
    from compress.attention.bench import dense_decode, random_decode_inputs

    query, key, value, heavy = random_decode_inputs(4, 32, 8, 3000, 128, 8, torch.float16, seed=3)
    labels = decode.label_cache(key, heavy)
    out = decode.double_sparse_decode(query, key, value, labels, heavy, 3000, 128 ** -0.5)  # T = n: all tokens
    dense = dense_decode(query, key, value, 128 ** -0.5)
    assert float((out.float() - dense.float()).norm() / dense.float().norm()) < 3e-3
