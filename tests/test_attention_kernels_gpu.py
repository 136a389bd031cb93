"""Double Sparsity decode kernels on a GPU against the PyTorch reference (fresh random inputs per case)."""
import zlib

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("label_bits, selection", [(4, "threshold"), (4, "topk-half"), (16, "threshold"),
                                                   (16, "topk-half"), (16, "topk")])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("heads, kv_heads", [(32, 32), (32, 8), (8, 2)])
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("context, budget", [(777, 48), (5000, 312), (200, 512)])
def test_kernels_match_reference(label_bits, selection, dtype, heads, kv_heads, batch, context, budget):
    """bench.check_failures: the rules the kernel benchmark passes a check by."""
    from compress.attention.decode_kernels.bench import check_decode, check_failures

    seed = zlib.crc32(repr((heads, kv_heads, batch, context, str(dtype), selection, label_bits)).encode()) % 10_000
    row = check_decode(batch, heads, kv_heads, context, 128, 8, budget, dtype, seed, selection=selection,
                       label_bits=label_bits)
    assert not check_failures(row), (check_failures(row), row)


def _keys(scores: torch.Tensor) -> torch.Tensor:
    bits = scores.view(torch.int16).to(torch.int32) & 0xFFFF
    return torch.where(bits >= 0x8000, bits ^ 0xFFFF, bits | 0x8000)


def packed_scores_and_candidates(label_bits, channels, heads, kv_heads, context, device="cuda"):
    """The scoring kernel equals PyTorch over the same label cache, its threshold is the sample's key of the
    plan's rank, and the select gathers exactly the tokens whose key reaches it."""
    from compress.attention.decode_kernels import labels, select
    from compress.attention.decode_kernels.bench import random_decode_inputs

    query, key, _, heavy = random_decode_inputs(2, heads, kv_heads, context, 128, channels, torch.float16, device,
                                                seed=channels)
    cache = labels.label_cache(key, heavy, label_bits)
    rows, budget = 2 * kv_heads, context // 16
    plan = select.threshold_plan(rows, context, budget, device)
    scores = labels.score_labels(query, cache, heavy, torch.float16, plan)
    select.threshold_top(scores, plan, budget)
    group = heads // kv_heads
    q = torch.gather(query.float(), -1, heavy.repeat_interleave(group, 0)[None].expand(2, heads, -1).to(device))
    table = labels.dequantize_labels(cache, channels) if label_bits == 4 else cache.float()
    reference = torch.einsum("bkr,bknr->bkn", q.view(2, kv_heads, group, -1).sum(2), table)
    assert float((scores.float() - reference).abs().max() / reference.abs().max()) < 1e-3
    keys = _keys(scores).view(rows, -1)
    i = torch.arange(plan.sample, device=device)
    sample = keys[:, (i // plan.run) * plan.run_stride + i % plan.run]
    expected = sample.topk(plan.rank, dim=-1).values[:, -1]
    threshold, found = plan.state[:, 0], plan.state[:, 1]
    assert (threshold - expected).abs().max() <= 1  # the sample rescored: float32 sums may round apart
    assert torch.equal(found, (keys >= threshold[:, None]).sum(-1).to(torch.int32))
    assert torch.equal(found, plan.counts.sum(-1).to(torch.int32))
    programs, chunk = select.stretch(rows, context, 1024, 4096, select.MAX_PROGRAMS)  # score_labels' defaults
    warps = plan.counts.shape[1] // programs  # a warp's share: a 1024 / warps run of each block of 1024
    width = 1024 // warps
    token = torch.arange(programs * chunk, device=device).view(programs, chunk // 1024, warps, width)
    for row in range(rows):
        for share, count in enumerate(plan.counts[row].tolist()):  # each warp's own slots, in token order
            program, warp = divmod(share, warps)
            tokens = token[program, :, warp].flatten()
            tokens = tokens[tokens < context]
            expected = tokens[keys[row, tokens] >= threshold[row]]
            assert count == len(expected)
            slots = plan.candidates[row, program, :, warp * (chunk // warps):][:, :count]
            assert torch.equal(slots[0].long(), expected)
            assert torch.equal(slots[1], keys[row, expected])


@pytest.mark.parametrize("label_bits, channels", [(4, 4), (4, 8), (4, 16), (16, 8)])
@pytest.mark.parametrize("heads, kv_heads, context", [(32, 32, 70_000), (32, 8, 9_999)])
def test_scores_threshold_and_candidates_match_pytorch(label_bits, channels, heads, kv_heads, context):
    packed_scores_and_candidates(label_bits, channels, heads, kv_heads, context)


def unlucky_samples_fall_back(pattern, device="cuda"):
    """Rows whose sample misleads the threshold (or whose scores all tie) still get their exact top-T."""
    from compress.attention.decode_kernels import decode, select

    batch, kv_heads, context, budget = 2, 4, 20_000, 1_250
    plan = select.threshold_plan(batch * kv_heads, context, budget, device)
    i = torch.arange(plan.sample, device=device)
    sampled = torch.zeros(context, dtype=torch.bool, device=device)
    sampled[(i // plan.run) * plan.run_stride + i % plan.run] = True
    generator = torch.Generator(device=device).manual_seed(7)
    value = torch.rand(batch, kv_heads, context, device=device, generator=generator) + 1
    if pattern == "sample-high":  # the sample alone is above the rest: fewer candidates than T
        value = torch.where(sampled, value + 4, value)
    elif pattern == "sample-low":  # the sample alone is below: every token a candidate, more than the list holds
        value = torch.where(sampled, value - 4, value)
    else:  # every score equal
        value = torch.ones_like(value)
    key = torch.zeros(batch, kv_heads, context, 128, device=device, dtype=torch.float16)
    key[..., 0] = value.half()
    query = torch.zeros(batch, kv_heads, 128, device=device, dtype=torch.float16)
    query[..., 0] = 1
    heavy = torch.arange(8, device=device).expand(kv_heads, 8)
    scores, index = decode.select_tokens(query, decode.label_cache(key, heavy), heavy, budget, "threshold")
    assert index.shape == (batch, kv_heads, budget)
    assert bool((index.sort(-1).values.diff(dim=-1) > 0).all())
    chosen = torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, index.long(), True)
    own = scores.float()
    lowest_kept = own.masked_fill(~chosen, float("inf")).amin(-1)
    assert bool((lowest_kept >= own.masked_fill(chosen, float("-inf")).amax(-1)).all())


@pytest.mark.parametrize("pattern", ["sample-high", "sample-low", "ties"])
def test_unlucky_samples_fall_back_to_the_whole_row(pattern):
    unlucky_samples_fall_back(pattern)


def test_all_tokens_equal_dense_sdpa():
    from compress.attention.decode_kernels import decode
    from compress.attention.decode_kernels.bench import dense_decode, random_decode_inputs

    query, key, value, heavy = random_decode_inputs(4, 32, 8, 3000, 128, 8, torch.float16, seed=3)
    labels = decode.label_cache(key, heavy, 4)
    out = decode.double_sparse_decode(query, key, value, labels, heavy, 3000, 128 ** -0.5)  # T = n: all tokens
    dense = dense_decode(query, key, value, 128 ** -0.5)
    assert float((out.float() - dense.float()).norm() / dense.float().norm()) < 3e-3
