"""Each scoring method against a direct reference written out element by element."""
import pytest
import torch

from compress.calibrate.collectors import Hessian, InputNorm
from compress.prune import METHODS, parse_pattern
from compress.prune.sparsegpt import sparsegpt_prune
from tests.test_pattern import brute_force_nm


def stats_for(x, cls):
    c = cls(x.shape[-1], x.device)
    for chunk in x.split(50):
        c.update(chunk)
    return c


def correlated_inputs(tokens=400, features=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(features, features, generator=g)
    scale = torch.rand(features, generator=g) * 3
    return (torch.randn(tokens, features, generator=g) @ mix) * scale


def test_input_norm_and_hessian_match_direct_sums():
    x = correlated_inputs()
    norm = stats_for(x, InputNorm)
    assert torch.allclose(norm.norm(), torch.sqrt((x ** 2).sum(0)), rtol=1e-5)
    h = stats_for(x, Hessian)
    assert torch.allclose(h.matrix(), 2 * x.T @ x / x.shape[0], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("spec", ["2:4", "6:8"])
def test_wanda_mask_equals_brute_force(spec):
    torch.manual_seed(1)
    w, x = torch.randn(6, 32), correlated_inputs()
    pattern = parse_pattern(spec)
    pruned = METHODS["wanda"].prune(w, stats_for(x, InputNorm), pattern, {})
    norms = [sum(float(x[t, j]) ** 2 for t in range(x.shape[0])) ** 0.5 for j in range(32)]
    score = torch.tensor([[abs(float(w[i, j])) * norms[j] for j in range(32)] for i in range(6)])
    expected = brute_force_nm(score, pattern.n, pattern.m)
    assert torch.equal(pruned != 0, expected)
    assert torch.equal(pruned[expected], w[expected])


def test_ria_score_equals_formula():
    torch.manual_seed(2)
    w, x = torch.randn(5, 16), correlated_inputs(features=16)
    pruned = METHODS["ria"].prune(w, stats_for(x, InputNorm), parse_pattern("2:4"), {"ria_alpha": 0.5})
    a = w.abs()
    score = torch.empty_like(a)
    for i in range(5):
        for j in range(16):
            score[i, j] = (a[i, j] / a[i].sum() + a[i, j] / a[:, j].sum()) * (x[:, j] ** 2).sum() ** 0.25
    assert torch.equal(pruned != 0, brute_force_nm(score, 2, 4))


def test_magnitude_unstructured_per_row():
    torch.manual_seed(3)
    w = torch.randn(4, 20)
    pruned = METHODS["magnitude"].prune(w, None, parse_pattern(None, 0.25), {})
    assert ((pruned == 0).sum(1) == 5).all()
    for r in range(4):
        assert (pruned[r][pruned[r] != 0].abs().min() >= w[r][pruned[r] == 0].abs().max())


def output_error(w, pruned, x):
    return ((x @ (w - pruned).T) ** 2).sum().item()


@pytest.mark.parametrize("spec,sparsity", [("2:4", None), ("4:8", None), (None, 0.5)])
def test_sparsegpt_beats_wanda_on_reconstruction(spec, sparsity):
    torch.manual_seed(4)
    pattern = parse_pattern(spec, sparsity)
    w, x = torch.randn(16, 64), correlated_inputs(features=64)
    wanda = METHODS["wanda"].prune(w, stats_for(x, InputNorm), pattern, {})
    sgpt = METHODS["sparsegpt"].prune(w, stats_for(x, Hessian), pattern, {"blocksize": 16})
    if pattern.is_nm:
        groups = (sgpt != 0).view(16, -1, pattern.m).sum(-1)
        assert (groups <= pattern.n).all() and ((sgpt == 0).sum() == w.numel() * (1 - pattern.n / pattern.m))
    else:
        assert ((sgpt == 0).sum(1) == 32).all()
    assert output_error(w, sgpt, x) < 0.8 * output_error(w, wanda, x)


def test_sparsegpt_zero_inputs_are_handled():
    torch.manual_seed(5)
    x = correlated_inputs(features=16)
    x[:, 3] = 0
    out = sparsegpt_prune(torch.randn(4, 16), stats_for(x, Hessian).matrix(), parse_pattern("2:4"))
    assert torch.isfinite(out).all() and (out[:, 3] == 0).all()
