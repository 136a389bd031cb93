"""SparseGPT against an independent transcription of the published algorithm (Frantar & Alistarh, 2023).

The transcription below follows the paper's Algorithm 1 and the authors' reference code, written out
plainly: every OBS update is applied to all later columns at once (no lazy batching, which only reorders
the same arithmetic), masks come from w²/d² with d the diagonal of the upper Cholesky factor of the
damped inverse Hessian. Both run in float64, so they must agree to rounding.
"""
import pytest
import torch

from compress.pattern import parse_pattern
from compress.prune import METHODS
from compress.prune.sparsegpt import sparsegpt_prune


def lowest(scores: list[float], count: int) -> list[int]:
    """Positions of the `count` smallest scores (random inputs: no ties)."""
    return sorted(range(len(scores)), key=lambda t: scores[t])[:count]


def reference_sparsegpt(weight, hessian, n=None, m=None, sparsity=None, blocksize=128, percdamp=0.01,
                        rule="row"):
    W, H = weight.double().clone(), hessian.double().clone()
    rows, cols = W.shape
    for j in range(cols):  # an input that never fired carries no information: drop its weights
        if H[j, j] == 0:
            H[j, j], W[:, j] = 1.0, 0.0
    damp = percdamp * sum(float(H[j, j]) for j in range(cols)) / cols
    for j in range(cols):
        H[j, j] += damp
    U = torch.linalg.cholesky(torch.linalg.inv(H)).T  # H⁻¹ = UᵀU, U upper triangular
    d = [float(U[j, j]) for j in range(cols)]
    prune = torch.zeros(rows, cols, dtype=torch.bool)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        if sparsity is not None:  # unstructured: the block's mask is fixed before its sweep starts
            score = [[float(W[r, j]) ** 2 / d[j] ** 2 for j in range(start, end)] for r in range(rows)]
            width = end - start
            if rule == "row":
                for r in range(rows):
                    for t in lowest(score[r], round(sparsity * width)):
                        prune[r, start + t] = True
            else:
                flat = [s for row in score for s in row]
                for t in lowest(flat, round(sparsity * rows * width)):
                    prune[t // width, start + t % width] = True
        for i in range(start, end):
            if m is not None and i % m == 0:  # N:M: choose the group's mask from the updated weights
                for r in range(rows):
                    score = [float(W[r, j]) ** 2 / d[j] ** 2 for j in range(i, i + m)]
                    for t in lowest(score, m - n):
                        prune[r, i + t] = True
            for r in range(rows):
                if prune[r, i]:
                    error = float(W[r, i]) / d[i]
                    W[r, i:] -= error * U[i, i:]  # the OBS update of the row's later weights
                    W[r, i] = 0.0
    return W, ~prune


def assert_same_mask(got, keep):
    assert torch.equal(got != 0, keep), f"{int(((got != 0) != keep).sum())} of {keep.numel()} mask entries differ"


def problem(rows=16, cols=72, tokens=300, seed=0, dead=(5,)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, cols, generator=g, dtype=torch.float64) @ torch.randn(cols, cols, generator=g,
                                                                                    dtype=torch.float64)
    x = x * torch.rand(cols, generator=g, dtype=torch.float64) * 3
    x[:, list(dead)] = 0
    return torch.randn(rows, cols, generator=g, dtype=torch.float64), 2 * x.T @ x / tokens


@pytest.mark.parametrize("spec", ["2:4", "4:8", "6:8"])
@pytest.mark.parametrize("blocksize", [16, 32])
def test_nm_matches_the_published_algorithm(spec, blocksize):
    w, h = problem(seed=blocksize)
    pattern = parse_pattern(spec)
    expected, keep = reference_sparsegpt(w, h, pattern.n, pattern.m, blocksize=blocksize)
    got = sparsegpt_prune(w, h, pattern, blocksize=blocksize, damp=0.01)
    assert got.dtype == torch.float64
    assert_same_mask(got, keep)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert (keep.view(16, -1, pattern.m).sum(-1) == pattern.n).all()


@pytest.mark.parametrize("rule", ["row", "block"])
@pytest.mark.parametrize("sparsity", [0.5, 0.3])
def test_unstructured_rules_match_their_transcriptions(rule, sparsity):
    w, h = problem(seed=7)
    expected, keep = reference_sparsegpt(w, h, sparsity=sparsity, blocksize=32, rule=rule)
    got = sparsegpt_prune(w, h, parse_pattern(None, sparsity), blocksize=32, damp=0.01, mask_rule=rule)
    assert_same_mask(got, keep)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_the_two_unstructured_rules_differ_and_the_method_reads_the_option():
    w, h = problem(seed=3)
    stats = type("Stats", (), {"matrix": lambda self: h})()
    pattern = parse_pattern(None, 0.5)
    row = METHODS["sparsegpt"].prune(w, stats, pattern, {"blocksize": 32, "mask_rule": "row"})
    block = METHODS["sparsegpt"].prune(w, stats, pattern, {"blocksize": 32, "mask_rule": "block"})
    assert ((row == 0).sum(1) == 36).all()  # 16 + 16 + 4 per row from the blocks of 32, 32 and 8 columns
    assert (block == 0).sum() == 16 * 36 and not ((block == 0).sum(1) == 36).all()
    with pytest.raises(ValueError, match="mask rule"):
        METHODS["sparsegpt"].prune(w, stats, pattern, {"mask_rule": "column"})
