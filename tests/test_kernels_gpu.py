"""The GPU kernels against dense references on fresh random inputs at odd shapes (run on CUDA machines)."""
import pytest
import torch

from compress.kernels.nm_format import pack_nm
from compress.pattern import nm_mask

pytestmark = pytest.mark.gpu


# Relative error of the sparse paths against dense, measured on one H200 over the 84 Llama shapes of
# benchmarks/results/kernels-ours-h200.json: at most 1.1e-4 in float16 and 3.1e-4 in bfloat16 (the sum
# order differs). The bounds below leave about 10x margin over those.
TOLERANCE = {torch.float16: 1e-3, torch.bfloat16: 3e-3}


def rel_err(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


def nm_weight(rows, cols, n, m, dtype, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(rows, cols, device="cuda", generator=g)
    return (w * nm_mask(torch.rand(rows, cols, device="cuda", generator=g), n, m)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (6, 8), (8, 16)])
@pytest.mark.parametrize("tokens", [1, 5, 16])
@pytest.mark.parametrize("permuted", [False, True])
def test_bitmask_kernel_matches_dense(dtype, n, m, tokens, permuted):
    from compress.kernels.decode import nm_mm

    w = nm_weight(257, 208, n, m, dtype, seed=tokens)
    values, mask = pack_nm(w, n, m)
    x = torch.randn(tokens, 208, device="cuda", dtype=dtype)
    perm = torch.randperm(208, device="cuda") if permuted else None
    ref = (x if perm is None else x[:, perm]) @ w.t()
    assert rel_err(nm_mm(x, values, mask, 208, n, m, perm), ref) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("tokens", [1, 3, 4, 13, 16])
@pytest.mark.parametrize("permuted", [False, True])
def test_2_4_kernels_match_dense(dtype, tokens, permuted):
    from compress.kernels.decode import nibbles_24, nm24_gemv, nm24_mm

    w = nm_weight(301, 456, 2, 4, dtype, seed=tokens)
    values, mask = pack_nm(w, 2, 4)
    nibbles = nibbles_24(mask, 456)
    x = torch.randn(2, tokens, 456, device="cuda", dtype=dtype)[1]  # a strided view
    perm = torch.randperm(456, device="cuda") if permuted else None
    ref = (x if perm is None else x[:, perm]) @ w.t()
    assert rel_err(nm24_mm(x, values, nibbles, 456, perm), ref) < TOLERANCE[dtype]
    assert rel_err(nm24_gemv(x, values, nibbles, 456, perm), ref) < TOLERANCE[dtype]


def test_transpose_copy_is_exact():
    from compress.kernels.layout import transpose_copy

    src = torch.randn(333, 1000, device="cuda", dtype=torch.float16)
    assert torch.equal(transpose_copy(src), src.t().contiguous())


@pytest.mark.parametrize("tokens", [1, 7, 300])
@pytest.mark.parametrize("permuted", [False, True])
def test_sparse_linear_kernels_match_dense(tokens, permuted):
    from compress.kernels.sparse_linear import SparseLinear, use_kernels

    linear = torch.nn.Linear(512, 384, bias=True, device="cuda", dtype=torch.float16)
    stored = nm_weight(384, 512, 2, 4, torch.float16)  # N:M in the stored (permuted) order
    perm = torch.randperm(512, device="cuda") if permuted else None
    linear.weight.data = stored if perm is None else torch.empty_like(stored).index_copy_(1, perm, stored)
    sparse = SparseLinear.from_linear(linear, 2, 4, perm)
    holder = torch.nn.Sequential(sparse)
    x = torch.randn(3, tokens, 512, device="cuda", dtype=torch.float16)[:1]
    dense = sparse(x)  # kernels off: the unpacked dense weight
    assert use_kernels(holder) == 1
    out = sparse(x)
    assert out.shape == dense.shape and out.is_contiguous()
    assert rel_err(out, dense) < TOLERANCE[torch.float16]


@pytest.mark.parametrize("permute", ["none", "heuristic"])
def test_compressed_model_on_kernels_gives_dense_logits(permute, tiny_model_dir, text_file, tmp_path):
    import compress
    from compress.kernels.sparse_linear import use_kernels
    from tests.test_compressed import common, invoke

    args = ["--method", "wanda", "--pattern", "2:4", "--permute", permute, "--export", "compressed", *common(text_file)]
    assert invoke("prune", tiny_model_dir, "--out", tmp_path / "nm", *args).exit_code == 0
    model = compress.load(tmp_path / "nm", dtype=torch.float16).cuda()
    ids = torch.randint(0, 320, (2, 48), device="cuda")
    with torch.no_grad():
        dense, dense_step = model(ids).logits, model(ids[:1, :1]).logits
        assert use_kernels(model) == 14
        sparse, step = model(ids).logits, model(ids[:1, :1]).logits
    # whole-model logits after two decoder layers: not measured on their own; 5x the per-Linear bound
    assert rel_err(sparse, dense) < 5 * TOLERANCE[torch.float16]
    assert rel_err(step, dense_step) < 5 * TOLERANCE[torch.float16]


def test_cli_prunes_on_the_gpu_and_evaluates_on_the_kernels(tiny_model_dir, text_file, tmp_path):
    import json

    from tests.test_cli import invoke

    args = ["--method", "magnitude", "--pattern", "2:4", "--device", "cuda", "--dtype", "float16",
            "--export", "compressed", "--out", tmp_path / "nm"]  # no --eval: nothing else initialises CUDA first
    result = invoke("prune", tiny_model_dir, *args)
    assert result.exit_code == 0, result.output
    result = invoke("eval", tmp_path / "nm", "--kernels", "--device", "cuda", "--dtype", "float16",
                    "--text", text_file, "--context", "64", "--json")
    assert result.exit_code == 0, result.output
    dense, kernels = json.loads(result.stdout)["results"]
    assert (dense["path"], kernels["path"]) == ("dense", "kernels")
    assert abs(kernels["perplexity"] - dense["perplexity"]) < 1e-3 * dense["perplexity"]  # 1B model: 4e-6 measured
    assert kernels["tokens_per_second"] > 0
