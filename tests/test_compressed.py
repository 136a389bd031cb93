"""The compressed N:M format, SparseLinear and the 6:8 slide decomposition, against dense references."""
import json

import pytest
import torch

from compress.kernels import SparseLinear, lift, pack_nm, slide_expand, unpack_nm
from compress.prune import nm_mask
from tests.test_cli import common, invoke


def nm_weight(rows, cols, n, m, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g).to(dtype)
    return w * nm_mask(torch.rand(rows, cols, generator=g), n, m)


@pytest.mark.parametrize("n,m,cols", [(2, 4, 64), (2, 4, 36), (4, 8, 64), (6, 8, 40), (1, 4, 12)])
def test_pack_unpack_round_trip_is_exact(n, m, cols):
    w = nm_weight(10, cols, n, m, torch.float16)
    w[0, :m] = 0  # a group with fewer than N nonzeros still packs
    values, mask = pack_nm(w, n, m)
    assert values.shape == (10, cols * n // m) and mask.dtype == torch.uint8 and mask.shape == (10, (cols + 7) // 8)
    assert torch.equal(unpack_nm(values, mask, cols), w)


def test_pack_rejects_a_weight_that_is_not_n_m():
    with pytest.raises(ValueError):
        pack_nm(torch.ones(2, 8), 2, 4)


def test_2_4_fp16_size_is_56_percent_of_dense():
    values, mask = pack_nm(nm_weight(256, 1024, 2, 4, torch.float16), 2, 4)
    stored = values.numel() * values.element_size() + mask.numel()
    assert stored / (256 * 1024 * 2) == pytest.approx(0.5625)


@pytest.mark.parametrize("m", [4, 6, 8, 16])
def test_slide_decomposition_is_lossless_and_2_4(m):
    w = nm_weight(32, 5 * m, m - 2, m, torch.float64, seed=m)
    expanded = slide_expand(w, m)
    assert expanded.shape[1] == 5 * (m // 2 - 1) * 4
    assert ((expanded != 0).view(32, -1, 4).sum(-1) <= 2).all()
    x = torch.randn(7, 5 * m, dtype=torch.float64)
    torch.testing.assert_close(lift(x, m) @ expanded.T, x @ w.T, rtol=0, atol=1e-12)
    assert torch.equal(expanded[expanded != 0].sort().values, w[w != 0].sort().values)  # each weight once


def test_slide_rejects_too_dense_groups():
    with pytest.raises(ValueError):
        slide_expand(nm_weight(4, 16, 7, 8), 8)


@pytest.mark.parametrize("permuted", [False, True])
def test_sparse_linear_matches_the_dense_linear(permuted):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 24)
    perm = torch.randperm(64) if permuted else None
    stored = nm_weight(24, 64, 2, 4)
    linear.weight.data = stored if perm is None else stored[:, torch.argsort(perm)]  # N:M in perm order
    sparse = SparseLinear.from_linear(linear, 2, 4, perm)
    x = torch.randn(3, 5, 64)
    torch.testing.assert_close(sparse(x), linear(x))
    assert torch.equal(sparse.dense_weight(), linear.weight.data)


@pytest.mark.parametrize("permute", ["none", "heuristic"])
def test_compressed_export_round_trips_to_the_dense_export(permute, tiny_model_dir, text_file, tmp_path):
    from transformers import AutoModelForCausalLM

    import compress

    args = ["--method", "wanda", "--pattern", "2:4", "--permute", permute, *common(text_file)]
    assert invoke("prune", tiny_model_dir, "--out", tmp_path / "hf", *args).exit_code == 0
    result = invoke("prune", tiny_model_dir, "--out", tmp_path / "nm", "--export", "compressed", *args)
    assert result.exit_code == 0, result.output
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    sparse = compress.load(tmp_path / "nm")
    manifest = json.loads((tmp_path / "nm" / "compression.json").read_text())
    assert len(manifest["format"]["linears"]) == 14
    for name in manifest["format"]["linears"]:
        module = sparse.get_submodule(name)
        if permute != "none" and name.endswith(("down_proj", "o_proj", "v_proj", "gate_proj", "up_proj")):
            continue  # folded: consumers' columns and producers' rows are permuted; the logits below agree
        folded = name.endswith(("down_proj", "o_proj"))  # their permutations fold into gate/up and v_proj
        assert isinstance(module, SparseLinear) and (module.perm is not None) == (permute != "none" and not folded)
        assert torch.equal(module.dense_weight(), dense.get_submodule(name).weight.data)
    ids = torch.randint(0, 320, (2, 48))
    with torch.no_grad():
        torch.testing.assert_close(sparse(ids).logits, dense(ids).logits, rtol=1e-5, atol=1e-5)
    size = lambda d: sum(f.stat().st_size for f in d.glob("*.safetensors"))  # noqa: E731
    assert size(tmp_path / "nm") < size(tmp_path / "hf")


def test_compressed_export_needs_n_m(tiny_model_dir, text_file, tmp_path):
    result = invoke("prune", tiny_model_dir, "--sparsity", "0.5", "--export", "compressed", "--out", tmp_path / "x",
                    *common(text_file))
    assert result.exit_code == 2 and "N:M" in result.output and not (tmp_path / "x").exists()


def test_eval_reads_a_compressed_export_and_kernels_need_a_gpu(tiny_model_dir, text_file, tmp_path):
    args = ["--method", "wanda", "--pattern", "2:4", *common(text_file)]
    assert invoke("prune", tiny_model_dir, "--out", tmp_path / "hf", *args).exit_code == 0
    assert invoke("prune", tiny_model_dir, "--out", tmp_path / "nm", "--export", "compressed", *args).exit_code == 0
    evaluation = ["--text", str(text_file), "--context", "32", "--json", "--device", "cpu"]
    result = invoke("eval", tmp_path / "hf", tmp_path / "nm", *evaluation)
    assert result.exit_code == 0, result.output
    dense, packed = json.loads(result.stdout)["results"]
    assert abs(dense["perplexity"] - packed["perplexity"]) < 1e-4 * dense["perplexity"]
    result = invoke("eval", tmp_path / "nm", *evaluation, "--kernels")
    assert result.exit_code == 2 and "CUDA" in result.output
    result = invoke("eval", tmp_path / "hf", *evaluation, "--kernels", "--device", "cuda")
    assert result.exit_code == 2
