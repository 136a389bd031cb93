"""--permute global: Sinkhorn, Hungarian hardening, soft N:M masks and their gradients, and the mode in a pass."""
import itertools

import pytest
import torch

from compress.permute.fold import inverse, is_permutation
from compress.permute.global_mode import GroupPlan, block_layout, relaxed_weight, take_windows
from compress.permute.relaxed import (expand_index, harden, hard_nm_mask, nm_mask_ste, one_hot, permute_blocks,
                                      sinkhorn, soft_nm_mask, unpermute_blocks)
from compress.prune.apply import PruneConfig, prune_model
from tests.test_engine import tiny


def test_sinkhorn_is_doubly_stochastic():
    logits = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    for tau in (2.0, 0.5):
        p = sinkhorn(logits, tau, iters=200)
        assert (p > 0).all()
        torch.testing.assert_close(p.sum(-1), torch.ones(3, 8, dtype=torch.float64), atol=1e-6, rtol=0)
        torch.testing.assert_close(p.sum(-2), torch.ones(3, 8, dtype=torch.float64), atol=1e-12, rtol=0)


def test_hungarian_hardening_equals_brute_force():
    g = torch.Generator().manual_seed(1)
    soft = sinkhorn(torch.randn(4, 6, 6, generator=g), 0.7)
    index = harden(soft)
    for unit in range(4):
        assert is_permutation(index[unit], 6)
        value = lambda perm: sum(float(soft[unit, i, j]) for i, j in enumerate(perm))
        best = max(itertools.permutations(range(6)), key=value)
        assert index[unit].tolist() == list(best)


def test_block_permutation_round_trips_and_expands_to_the_flat_index():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(5, 24, generator=g)
    units = torch.tensor([0, 1, 0])  # blocks 0 and 2 share one permutation
    index = torch.stack([torch.randperm(8, generator=g) for _ in range(2)])
    p = one_hot(index)
    perm = expand_index(index, units)
    assert is_permutation(perm, 24)
    assert torch.equal(permute_blocks(w, p, units), w[:, perm])
    assert torch.equal(unpermute_blocks(permute_blocks(w, p, units), p, units), w)


def test_soft_mask_gradient_matches_finite_differences():
    g = torch.Generator().manual_seed(3)
    score = (torch.rand(4, 16, generator=g, dtype=torch.float64) + 0.1).requires_grad_()
    for n, m in ((2, 4), (6, 8)):
        assert torch.autograd.gradcheck(lambda s: soft_nm_mask(s, n, m, 0.3), (score,))
        # straight-through: the hard mask forward, the soft mask's derivative backward
        upstream = torch.randn(4, 16, generator=g, dtype=torch.float64)
        ste = nm_mask_ste(score, n, m, 0.3)
        assert torch.equal(ste.detach(), hard_nm_mask(score.detach(), n, m))
        (grad,) = torch.autograd.grad((upstream * ste).sum(), score)
        eps, numeric = 1e-6, torch.zeros_like(score)
        for i, j in itertools.product(range(4), range(16)):
            bump = torch.zeros_like(score)
            bump[i, j] = eps
            soft = lambda s: float((upstream * soft_nm_mask(s, n, m, 0.3)).sum())
            numeric[i, j] = (soft(score.detach() + bump) - soft(score.detach() - bump)) / (2 * eps)
        torch.testing.assert_close(grad, numeric, atol=1e-6, rtol=1e-5)


def layer_plan(rows=6, features=16, block=8, seed=4):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, features, generator=g, dtype=torch.float64)
    x = torch.randn(40, features, generator=g, dtype=torch.float64) * torch.rand(features, generator=g,
                                                                                 dtype=torch.float64)
    score = w.abs() * x.norm(dim=0)
    start = torch.randperm(features, generator=g)
    _, units = block_layout(features, 4, block)
    plan = GroupPlan(["weight"], [rows], w[:, start], score[:, start], start, units)
    return plan, w, x, score


def test_relaxed_layer_gradient_matches_finite_differences():
    """A tiny layer's output error under the fully soft relaxation (Sinkhorn P, soft mask): autograd vs
    finite differences in the logits."""
    plan, w, x, _ = layer_plan()
    logits = torch.randn(2, 8, 8, generator=torch.Generator().manual_seed(5), dtype=torch.float64).requires_grad_()

    def loss(lg):
        p = sinkhorn(lg, 0.8, iters=10)
        return (x @ (relaxed_weight(plan, p, 2, 4, 0.3, hard=False) - w).T).pow(2).sum()

    assert torch.autograd.gradcheck(loss, (logits,))


def test_hard_relaxed_weight_is_the_pruned_weight_of_the_hardened_permutation():
    plan, w, _, score = layer_plan()
    index = torch.stack([torch.randperm(8, generator=torch.Generator().manual_seed(u)) for u in range(2)])
    pruned = relaxed_weight(plan, one_hot(index, torch.float64), 2, 4, 0.3, hard=True)
    perm = plan.permutation(index)
    expected = torch.zeros_like(w)
    expected[:, perm] = w[:, perm] * hard_nm_mask(score[:, perm], 2, 4)
    assert torch.equal(pruned, expected)
    assert torch.equal(perm[inverse(perm)], torch.arange(16))


def test_block_layout():
    assert block_layout(576, 4, 64)[0] == 64 and block_layout(1536, 4, 64)[1].numel() == 24
    assert block_layout(40, 4, 64)[0] == 40 and block_layout(96, 8, 64)[0] == 48
    size, units = block_layout(64, 4, 64, (16, torch.tensor([0, 0, 1, 1])))
    assert size == 16 and units.tolist() == [0, 0, 1, 1]


def test_take_windows_cuts_only_batch_dimensions():
    hidden, cos = torch.randn(4, 3, 2), torch.randn(1, 3, 2)
    kwargs = {"position_embeddings": (cos, cos), "mask": torch.randn(4, 1, 3, 3), "flag": True}
    index = torch.tensor([1, 3])
    cut = take_windows(kwargs, index, 4)
    assert torch.equal(take_windows(hidden, index, 4), hidden[[1, 3]])
    assert cut["position_embeddings"][0] is cos and cut["mask"].shape[0] == 2 and cut["flag"] is True


@pytest.mark.parametrize("method,pattern", [("wanda", "2:4"), ("ria", "2:4"), ("sparsegpt", "2:4"), ("wanda", "6:8")])
def test_global_is_never_worse_than_its_start(method, pattern):
    """Per layer, the decoder layer's output error ends no higher than with the heuristic permutations it
    started from (layer 0 sees the same inputs in both runs: its start is exactly the heuristic's layer)."""
    ids = torch.randint(0, 320, (8, 32), generator=torch.Generator().manual_seed(1))
    runs = {}
    for kind in ("heuristic", "global"):
        model = tiny()
        config = PruneConfig(method=method, pattern=pattern, permute=kind, perm_block_size=16, perm_iters=10,
                             perm_tokens=64)
        runs[kind] = prune_model(model, config, ids)
    n, m = map(int, pattern.split(":"))
    assert runs["global"].overall_sparsity == pytest.approx(1 - n / m)
    first = runs["global"].steps[0].info["global_permutation"]
    assert first["layer_error_heuristic"] == pytest.approx(runs["heuristic"].steps[0].token_error, rel=1e-6)
    for step in runs["global"].steps:
        report = step.info["global_permutation"]
        assert report["layer_error"] <= report["layer_error_heuristic"]
        assert step.token_error == pytest.approx(report["layer_error"], rel=1e-6)
        assert {g["kept"] for g in report["groups"].values()} <= {"heuristic", "global"}
        assert step.info["note"].startswith("global permutation: layer error")
    named = dict(tiny().named_modules())
    for name, perm in runs["global"].permutations.items():
        assert is_permutation(perm, named[name].weight.shape[1])


def test_learning_returns_its_best_hard_permutation_never_worse_than_the_start():
    """A Linear as the 'layer', full batches: each step's loss is exact for its hardened permutation, the start
    (step 0) is the heuristic order, and the permutation returned has the lowest loss seen relative to the start,
    recomputed here."""
    from compress.permute.global_mode import GlobalConfig, learn_layer_permutations, token_error
    from compress.prune import mask_for, parse_pattern

    plan, w, x, score = layer_plan(rows=12, features=32, block=16)
    windows = x.float().view(4, 10, 32)
    ref = windows @ w.float().T
    plan = GroupPlan(plan.params, plan.rows, plan.weight.float(), plan.score.float(), plan.start, plan.unit_of_block)
    forward = lambda weights, batch: batch[0] @ weights["weight"].T

    def loss_of(perm):
        pruned = torch.zeros_like(w.float())
        pruned[:, perm] = w.float()[:, perm] * mask_for(score.float()[:, perm], parse_pattern("2:4"))
        return float(token_error(windows @ pruned.T, ref))

    for lr, tokens in ((0.05, 10**6), (0.5, 10**6), (0.5, 20)):
        config = GlobalConfig(steps=15, lr=lr, tokens=tokens)
        (perm,), info = learn_layer_permutations([plan], forward, [(windows, (), {}, ref)], 2, 4, config)
        assert is_permutation(perm, 32)
        assert info["best_ratio"] <= 1
        if tokens > 40:  # every window each step: the losses are those of the whole set
            assert info["train_loss_first"] == pytest.approx(loss_of(plan.start), rel=1e-5)
            assert loss_of(perm) == pytest.approx(info["best_ratio"] * loss_of(plan.start), rel=1e-5)


def test_cli_global_reports_the_loss_per_layer_and_folds(tiny_model_dir, text_file, tmp_path):
    """compress prune --permute global: one plain progress line per layer with its errors (no terminal here),
    the global settings in compression.json, and an N:M export whose permutations are indices."""
    import json

    from safetensors.torch import load_file

    from tests.test_cli import common, invoke

    out = tmp_path / "global"
    result = invoke("prune", tiny_model_dir, "--method", "wanda", "--pattern", "2:4", "--permute", "global",
                    "--perm-block-size", 16, "--perm-iters", 3, "--perm-tokens", 64, "--out", out, *common(text_file))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "global permutation: layer error" in line]
    assert len(lines) == 2 and "(1/2) model.layers.0" in lines[0] and "training loss" in lines[0]
    pruned = json.loads((out / "compression.json").read_text())["stages"][0]["result"]
    assert pruned["permute"]["kind"] == "global" and pruned["permute"]["global"]["per_layer"]["steps"] == 3
    steps = [line for line in result.output.splitlines() if "permutation model pass: step" in line]
    assert steps[0].endswith(("channels moved 0",)) and "step 30/30" in steps[-1]
    model_pass = pruned["permutation_model_pass"]
    assert model_pass["steps"] == pruned["permute"]["global"]["model_pass"]["steps"] == 30
    assert (model_pass["objective_learned"] < model_pass["objective_start"]) == (model_pass["kept"] == "learned")
    report = pruned["layers"][1]["info"]["global_permutation"]
    assert report["layer_error"] <= report["layer_error_heuristic"]
    assert len(load_file(out / "permutations.safetensors")) == 14


@pytest.mark.parametrize("args,message", [
    (["--method", "magnitude", "--permute", "global"], "calibration data"),
    (["--permute", "heuristic", "--perm-iters", "3"], "--perm-iters does not apply"),
    (["--permute", "global", "--perm-steps", "3"], "--perm-steps does not apply"),
    (["--permute", "heuristic", "--perm-model-steps", "3"], "--perm-model-steps does not apply"),
    (["--perm-windows", "3"], "--perm-windows does not apply"),
])
def test_cli_global_refuses_what_does_not_apply(args, message, tiny_model_dir):
    from tests.test_cli import invoke

    result = invoke("prune", tiny_model_dir, *args)
    assert result.exit_code == 2 and message in result.output
