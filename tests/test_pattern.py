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
