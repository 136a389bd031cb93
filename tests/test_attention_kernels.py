"""The Triton decode kernels in Triton's CPU interpreter (where Triton is installed) against the reference,
and the 4-bit label cache's packing against the evaluation path's quantization."""
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

SCRIPT = """
import json, torch
from compress.attention.decode_kernels.bench import check_decode
rows = [check_decode(*case, torch.float16, seed=i, device="cpu", selection=selection, label_bits=bits)
        for bits, selection in ((16, "topk"), (16, "threshold"), (4, "threshold"))
        for i, case in enumerate([(2, 8, 2, 3000, 32, 4, 200), (1, 4, 4, 100, 64, 8, 120), (3, 8, 8, 1257, 32, 4, 64),
                                  (1, 4, 2, 700, 64, 12, 50)])]
print(json.dumps(rows))
"""


def test_interpreted_kernels_match_reference():
    # the interpreter is chosen when the kernels are defined: a fresh process with TRITON_INTERPRET=1
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    for row in json.loads(done.stdout.strip().splitlines()[-1]):
        assert row["finite"] and row["selected_unique"] and row["selected_within_tolerance"]
        assert row["output_error"] < 3e-3
        if row["selection"] == "topk":
            assert row["rows_with_set_equal_reference"] == 1.0 and row["score_error"] < 1e-5
        else:  # float16 scores: rounding may reorder near-ties at the boundary (within tolerance, checked above)
            assert row["rows_with_set_equal_reference"] > 0.5 and row["score_error"] < 1e-3
        # 4 bits: the same codes as the evaluation path, only the per-key min and step rounded to float16
        assert row["score_error_vs_evaluation"] < (1e-3 if row["label_bits"] == 16 else 5e-3)


@pytest.mark.parametrize("channels", [3, 8, 12, 16])
def test_packed_labels_hold_the_evaluation_codes(channels):
    from compress.attention.decode_kernels import labels
    from compress.attention.evaluation import sparse

    generator = torch.Generator().manual_seed(channels)
    key = (torch.randn(2, 3, 50, 64, generator=generator) * 3).to(torch.float16)
    heavy = torch.stack([torch.randperm(64, generator=generator)[:channels] for _ in range(3)])
    packed = labels.label_cache(key, heavy, 4)
    assert packed.dtype == torch.int32 and packed.shape == (2, 3, (channels + 7) // 8 + 1, 50)
    gathered = torch.gather(key.float(), -1, heavy[None, :, None, :].expand(2, 3, 50, channels))
    codes, low, step = sparse.label_codes(gathered, 4)
    # rebuilt from the codes with min and step rounded to float16, as the cache stores them
    assert torch.equal(labels.dequantize_labels(packed, channels), codes * step.half().float() + low.half().float())
    error = (labels.dequantize_labels(packed, channels) - sparse.quantize_labels(gathered, 4)).abs().max()
    assert error <= 2e-3 * gathered.abs().max()
    assert labels.label_bytes(channels, 4) == 4 * packed.shape[2]


PRIOR_SCRIPT = """
import json, torch
from compress.attention.calibration import prior as position
from compress.attention.decode_kernels import decode, labels
from compress.attention.decode_kernels.bench import random_decode_inputs
rows = []
for bits, selection, (b, h, kv, n, d, r, T) in [(4, "threshold", (2, 8, 2, 3000, 32, 4, 200)),
                                               (16, "topk", (1, 6, 3, 700, 64, 8, 50)),
                                               (4, "topk-half", (1, 4, 4, 2500, 32, 8, 300))]:
    q, k, v, heavy = random_decode_inputs(b, h, kv, n, d, r, torch.float16, device="cpu", seed=n)
    table = torch.randn(kv, position.BUCKETS, generator=torch.Generator().manual_seed(n)) * 3
    cache = decode.label_cache(k, heavy, bits)
    group = h // kv
    kv_of_head = torch.arange(h) // group
    stored = labels.dequantize_labels(cache, r) if bits == 4 else cache.float()
    gathered = torch.gather(q.float(), -1, heavy[kv_of_head][None].expand(b, h, r)).view(b, kv, group, r).sum(2)
    # the evaluation path's prior for the decode query at n - 1, summed over each KV head's query heads
    added = position.prior_scores(table, kv_of_head, 1, n)[0, :, 0].view(kv, group, n).sum(1)
    reference = torch.einsum("bkr,bknr->bkn", gathered, stored) + added[None]
    scores = labels.score_labels(q, cache, heavy, torch.float32, prior=table)
    own = labels.score_labels(q, cache, heavy, torch.float32 if selection == "topk" else torch.float16,
                              prior=table).float()
    index = decode.select_tokens(q, cache, heavy, T, selection, prior=table)[1]
    chosen = torch.zeros_like(own, dtype=torch.bool).scatter_(-1, index.long(), True)
    plain = torch.zeros_like(own, dtype=torch.bool).scatter_(
        -1, decode.select_tokens(q, cache, heavy, T, selection)[1].long(), True)
    longer = decode.label_cache(torch.cat([k, k[:, :, :37]], 2), heavy, bits)  # a cache with room to grow
    view = longer.narrow(3 if bits == 4 else 2, 0, n)
    rows.append({"view_equal": bool(torch.equal(labels.score_labels(q, view, heavy, torch.float32, prior=table), scores)),
                 "error": float((scores - reference).abs().max() / reference.abs().max()),
                 "top_of_own": bool((own.masked_fill(~chosen, float("inf")).amin(-1)
                                     >= own.masked_fill(chosen, float("-inf")).amax(-1)).all()),
                 "prior_changed_the_set": bool((chosen != plain).any())})
print(json.dumps(rows))
"""


def test_interpreted_position_prior_matches_evaluation_path():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", PRIOR_SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    for row in json.loads(done.stdout.strip().splitlines()[-1]):
        assert row["error"] < 1e-5  # float32 scores: label dot products plus the prior, as the evaluation path adds it
        assert row["top_of_own"] and row["prior_changed_the_set"]
        assert row["view_equal"]  # a view of a longer label cache (as decoding holds it) scores as a copy

