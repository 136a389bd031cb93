"""FactorizedMLP's grouped-matmul path on a GPU: equal to the loop over experts, and held by a CUDA graph."""
import pytest
import torch

from compress.factorize import FactorizedMLP

pytestmark = pytest.mark.gpu


def _moe(experts, top_k, hidden=256, m=128, dtype=torch.bfloat16, seed=0, act=None, shared=0):
    torch.manual_seed(seed)
    width = experts * m + shared
    gate, up, down = (torch.nn.Linear(hidden, width, bias=False), torch.nn.Linear(hidden, width, bias=False),
                      torch.nn.Linear(width, hidden, bias=False))
    ids = torch.randperm(width)
    groups, common = ids[shared:].reshape(experts, m).sort(1).values, ids[:shared].sort().values
    moe = FactorizedMLP.from_dense(gate, up, down, act or torch.nn.SiLU(), groups, top_k,
                                   shared=common if shared else None)
    torch.nn.init.normal_(moe.router.weight, std=hidden ** -0.5)
    return moe.to("cuda", dtype)


@pytest.mark.parametrize("act", ["silu", "gelu_pytorch_tanh"])
@pytest.mark.parametrize("experts, top_k", [(4, 1), (4, 2), (16, 4), (4, 4), (8, 3)])
@pytest.mark.parametrize("tokens", [1, 5, 16, 17, 3000])  # ≤ 16: the Triton decode kernels; more: grouped matmuls
def test_gpu_paths_equal_the_expert_loop(act, experts, top_k, tokens):
    from transformers.activations import ACT2FN

    moe = _moe(experts, top_k, act=ACT2FN[act])
    x = torch.randn(tokens, 256, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        grouped = moe(x).float()
    with torch.enable_grad():  # training mode takes the loop over experts
        loop = moe(x).detach().float()
    assert (grouped - loop).norm() / loop.norm() < 1e-2  # bf16 rounding of the pair outputs


@pytest.mark.parametrize("shared", [256, 200])  # whole slices of an expert's width, and a ragged last slice
@pytest.mark.parametrize("experts, top_k", [(14, 2), (4, 1)])
@pytest.mark.parametrize("tokens", [1, 16, 17, 300])
def test_shared_part_on_gpu_paths_equals_the_expert_loop(shared, experts, top_k, tokens):
    moe = _moe(experts, top_k, shared=shared)
    x = torch.randn(tokens, 256, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        fast = moe(x).float()
        shared_only = moe.shared_output(x).float()
    with torch.enable_grad():
        loop = moe(x).detach().float()
    assert shared_only.norm() > 0.1 * loop.norm()  # the shared part is a real share of the output
    assert (fast - loop).norm() / loop.norm() < 1e-2


def test_grouped_path_replays_in_a_cuda_graph():
    moe = _moe(4, 1)
    x = torch.randn(2, 64, 256, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        want = moe(x)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            moe(x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = moe(x)
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.testing.assert_close(out, moe(x))
    assert not torch.equal(out, want)


@pytest.mark.parametrize("experts, top_k", [(4, 1), (4, 2), (16, 4), (8, 3), (64, 8)])
@pytest.mark.parametrize("tokens", [1, 7, 16])
def test_decode_routing_equals_softmax_top_k(experts, top_k, tokens):
    from compress.factorize.decode import route_decode
    from compress.factorize.moe import route

    moe = _moe(experts, top_k, seed=tokens)
    x = torch.randn(tokens, 256, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():  # reference: fp32 logits rounded to bf16 once (cuBLAS may reduce in bf16)
        logits = (x.float() @ moe.router.weight.float().T).to(torch.bfloat16)
        probs = torch.softmax(logits.float(), -1)
        want_w, _ = route(logits, top_k)
        got_w, got_i = route_decode(x, moe.router.weight, top_k)
    # bf16 logits tie often among many experts, so compare what was taken, not which of two equal experts
    assert all(len(set(row)) == top_k for row in got_i.tolist())
    torch.testing.assert_close(probs.gather(-1, got_i.long()).sort(-1).values,
                               probs.topk(top_k, -1).values.sort(-1).values, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got_w.sort(-1).values, want_w.sort(-1).values, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("experts, top_k", [(14, 2), (4, 1), (8, 3)])
def test_grouped_path_equals_the_expert_loop(experts, top_k):
    # the grouped matmuls take over beyond the blocked kernels' range (launch.py); routed() takes them at any count
    moe = _moe(experts, top_k, shared=256)
    x = torch.randn(300, 256, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        grouped = moe.routed(x).float()
    with torch.enable_grad():
        loop = moe.routed(x).detach().float()
    assert (grouped - loop).norm() / loop.norm() < 1e-2
