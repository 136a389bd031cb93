import itertools

import pytest
import torch

from compress.errors import BadInput
from compress.pattern import Pattern, nm_mask, parse_pattern, row_mask


@pytest.mark.parametrize("text,n,m", [("2:4", 2, 4), ("4:8", 4, 8), ("6:8", 6, 8), (" 1 : 16 ", 1, 16)])
def test_parse_nm(text, n, m):
    p = parse_pattern(text)
    assert (p.n, p.m) == (n, m)
    assert p.zero_fraction == pytest.approx(1 - n / m)


@pytest.mark.parametrize("bad", ["4:4", "5:4", "0:4", "2-4", "a:b", ""])
def test_parse_rejects(bad):
    with pytest.raises(BadInput):
        parse_pattern(bad)


def test_pattern_xor_sparsity():
    with pytest.raises(BadInput):
        parse_pattern("2:4", 0.5)
    with pytest.raises(BadInput):
        parse_pattern(None, 1.5)
    assert parse_pattern(None, 0.5).zero_fraction == 0.5


def test_m_must_divide_input_dim():
    with pytest.raises(BadInput, match="does not divide"):
        Pattern(n=2, m=8).check_fits(100, "x")


def brute_force_nm(score, n, m):
    """For each group, the subset of n positions with the largest total score."""
    keep = torch.zeros_like(score, dtype=torch.bool)
    for r in range(score.shape[0]):
        for g in range(0, score.shape[1], m):
            group = score[r, g:g + m].tolist()
            best = max(itertools.combinations(range(m), n), key=lambda idx: sum(group[i] for i in idx))
            for i in best:
                keep[r, g + i] = True
    return keep


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (6, 8), (1, 4), (3, 8)])
def test_nm_mask_keeps_exactly_n_and_matches_brute_force(n, m):
    torch.manual_seed(n * 10 + m)
    score = torch.rand(7, 5 * m)
    mask = nm_mask(score, n, m)
    assert (mask.view(7, 5, m).sum(-1) == n).all()
    assert torch.equal(mask, brute_force_nm(score, n, m))


def test_row_mask_drops_the_smallest_of_each_row():
    torch.manual_seed(0)
    score = torch.rand(6, 40)
    mask = row_mask(score, 0.3)
    assert (mask.sum(1) == 28).all()
    for r in range(6):
        threshold = score[r].sort().values[12]
        assert torch.equal(mask[r], score[r] >= threshold)


def by_documented_rule(values: list[float], keep: int) -> set[int]:
    """Highest score first; among equal scores the lower index first (compress/pattern.py docstring)."""
    return set(sorted(range(len(values)), key=lambda t: (-values[t], t))[:keep])


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (6, 8), (1, 4)])
def test_nm_mask_breaks_ties_by_the_lower_index(n, m):
    score = torch.randint(0, 3, (50, 8 * m), generator=torch.Generator().manual_seed(m + n)).float()
    mask = nm_mask(score, n, m)
    for r in range(50):
        for g in range(0, 8 * m, m):
            kept = {t for t in range(m) if mask[r, g + t]}
            assert kept == by_documented_rule(score[r, g:g + m].tolist(), n), (r, g)


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.9])
def test_row_mask_breaks_ties_by_the_lower_index(sparsity):
    score = torch.randint(0, 4, (30, 40), generator=torch.Generator().manual_seed(7)).double()
    score[0] = 1.0  # a row of one value: the first columns are kept
    mask = row_mask(score, sparsity)
    keep = 40 - round(sparsity * 40)
    for r in range(30):
        assert {t for t in range(40) if mask[r, t]} == by_documented_rule(score[r].tolist(), keep), r
    assert mask[0, :keep].all() and not mask[0, keep:].any()


def any_top_k(score, k):
    """A plain torch.topk mask: what the tie rule must reproduce wherever the boundary is not tied."""
    return torch.zeros_like(score, dtype=torch.bool).scatter_(-1, score.topk(k, dim=-1, sorted=False).indices, True)


def test_tie_rule_changes_only_tied_decisions():
    """Random floats have no ties: the masks equal torch.topk's; bfloat16 has some, and only they move."""
    g = torch.Generator().manual_seed(11)
    tied = {}
    for dtype in (torch.float32, torch.float64, torch.bfloat16):
        score = (torch.rand(64, 96, generator=g) * torch.randn(96, generator=g).exp()).to(dtype)
        tied[dtype] = 0
        for n, m in [(2, 4), (4, 8), (6, 8)]:
            groups = score.reshape(64, -1, m)
            kth = groups.topk(n, dim=-1).values[..., -1:]
            free = ((groups != kth) | ((groups == kth).sum(-1, keepdim=True) == 1)).reshape(64, 96)
            assert torch.equal(nm_mask(score, n, m)[free], any_top_k(groups, n).reshape(64, 96)[free])
            tied[dtype] += int((~free).sum())
        for sparsity in (0.3, 0.5, 0.7):
            keep = 96 - round(sparsity * 96)
            kth = score.topk(keep, dim=-1).values[:, -1:]
            free = (score != kth) | ((score == kth).sum(-1, keepdim=True) == 1)
            assert torch.equal(row_mask(score, sparsity)[free], any_top_k(score, keep)[free])
            tied[dtype] += int((~free).sum())
    assert tied[torch.float32] == tied[torch.float64] == 0 and tied[torch.bfloat16] > 0
