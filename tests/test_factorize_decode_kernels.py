"""The factorized FFN's Triton kernels (decode.py for a few tokens, blocked.py for more; routed experts and the
shared part in the same launches), in Triton's CPU interpreter where Triton is installed, against
FactorizedMLP's loop over experts."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

SCRIPT = """
import json, torch
from compress.factorize import FactorizedMLP
from compress.factorize.blocked import experts_blocked
from compress.factorize.decode import experts_decode, route_decode
from compress.factorize.moe import route

rows = []
# (experts, m, top_k, shared neurons, tokens, activation): shared widths that fill whole slices of m,
# a ragged last slice, none; one token (split over the hidden dim), a few, the most the kernels take
for experts, m, top_k, shared, tokens, act in [(4, 32, 1, 64, 1, "silu"), (6, 32, 2, 40, 5, "silu"),
                                               (4, 16, 2, 0, 16, "silu"), (5, 32, 3, 96, 3, "gelu_tanh")]:
    torch.manual_seed(experts * 7 + tokens)
    hidden, width = 64, experts * m + shared
    gate, up, down = (torch.nn.Linear(hidden, width, bias=False), torch.nn.Linear(hidden, width, bias=False),
                      torch.nn.Linear(width, hidden, bias=False))
    ids = torch.randperm(width)
    groups, common = ids[shared:].reshape(experts, m).sort(1).values, ids[:shared].sort().values
    fn = torch.nn.SiLU() if act == "silu" else torch.nn.GELU(approximate="tanh")
    moe = FactorizedMLP.from_dense(gate, up, down, fn, groups, top_k, shared=common if shared else None)
    torch.nn.init.normal_(moe.router.weight, std=hidden ** -0.5)
    x = torch.randn(tokens, hidden)
    with torch.no_grad():
        weights, index = route(moe.router(x), top_k)
        want = moe.routed(x) + moe.shared_output(x)  # CPU: the loop over the chosen experts
        parts = {"shared_gate_up": moe.shared_gate_up, "shared_down": moe.shared_down} if shared else {}
        got = experts_decode(x, moe.gate_up, moe.down, index, weights, act == "gelu_tanh",
                             launch={"up_k": 32, "down_k": 16}, **parts)
        got_w, got_i = route_decode(x, moe.router.weight, top_k, block_k=32)
        many = torch.randn(37, hidden)  # blocked.py: blocks of 16 tokens, the last one ragged
        blocked = experts_blocked(many, moe.router.weight, moe.gate_up, moe.down, top_k, act == "gelu_tanh",
                                  launch={"block_t": 16, "up_n": 16, "up_k": 32, "down_n": 16, "down_k": 16,
                                          "compact": 16}, **parts)
        blocked_want = moe.routed(many) + moe.shared_output(many)
    rows.append({"case": [experts, m, top_k, shared, tokens, act],
                 "error": float((got - want).norm() / want.norm()),
                 "blocked_error": float((blocked - blocked_want).norm() / blocked_want.norm()),
                 "same_experts": sorted(map(sorted, got_i.tolist())) == sorted(map(sorted, index.tolist())),
                 "weights_error": float((got_w.sort(-1).values - weights.sort(-1).values).abs().max())})
print(json.dumps(rows))
"""


def test_interpreted_kernels_match_the_expert_loop():
    # the interpreter is chosen when the kernels are defined: a fresh process with TRITON_INTERPRET=1
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(rows) == 4
    for row in rows:
        assert row["same_experts"], row
        assert row["weights_error"] < 1e-5, row
        assert row["error"] < 1e-5, row  # float32 throughout: only the summation order differs
        assert row["blocked_error"] < 1e-5, row
