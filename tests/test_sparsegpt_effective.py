"""SparseGPT's effective weights (what the permutation model pass learns masks on) against a recorded sweep."""
import torch

from compress.pattern import nm_mask, parse_pattern
from compress.prune.sparsegpt import effective_weights, inverse_hessian_factor, sparsegpt_prune


def _recorded_sweep(dense, hessian, n, m, damp):
    """A plain column-by-column OBS sweep (no blocks, no lazy updates) that records each column on reaching it."""
    u, dead = inverse_hessian_factor(hessian, damp)
    w = dense.clone()
    w[:, dead] = 0
    seen = torch.zeros_like(w)
    for i in range(w.shape[1]):
        if i % m == 0:
            d = torch.diag(u)[i:i + m]
            keep = nm_mask(w[:, i:i + m].pow(2) / d.pow(2), n, m)
        seen[:, i] = w[:, i]
        error = w[:, i] * (~keep[:, i % m]) / u[i, i]
        w[:, i:] -= torch.outer(error, u[i, i:])
        w[:, i] *= keep[:, i % m]
    return seen, w


def test_effective_weights_equal_the_values_a_recorded_sweep_saw():
    torch.manual_seed(0)
    dense = torch.randn(12, 64, dtype=torch.float64)
    x = torch.randn(300, 64, dtype=torch.float64) * torch.linspace(0.2, 3, 64, dtype=torch.float64)
    x[:, 5] = 0  # a dead channel
    hessian = 2 * x.T @ x / 300
    seen, final = _recorded_sweep(dense, hessian, 2, 4, 0.01)
    pruned = sparsegpt_prune(dense, hessian, parse_pattern("2:4"), blocksize=16, damp=0.01)
    torch.testing.assert_close(pruned, final, rtol=1e-9, atol=1e-9)  # the reference sweep is SparseGPT's
    effective = effective_weights(dense, pruned, hessian, 0.01)
    torch.testing.assert_close(effective, seen, rtol=1e-8, atol=1e-8)
    kept = pruned != 0
    assert torch.equal(effective[kept], pruned[kept])  # kept weights end as the sweep found them
    assert (effective[~kept] != 0).float().mean() > 0.9  # pruned ones are what was removed, not zeros
    assert torch.all(effective[:, 5] == 0)


def test_effective_weights_in_float32_follow_float64():
    torch.manual_seed(1)
    dense = torch.randn(16, 128)
    x = torch.randn(500, 128)
    hessian = 2 * x.T @ x / 500
    pruned = sparsegpt_prune(dense, hessian, parse_pattern("2:4"), use_graphs=False)
    effective = effective_weights(dense, pruned, hessian)
    assert effective.dtype == torch.float32
    reference = effective_weights(dense.double(), sparsegpt_prune(dense.double(), hessian.double(), parse_pattern("2:4")),
                                  hessian.double())
    torch.testing.assert_close(effective.double(), reference, rtol=1e-3, atol=1e-4)
