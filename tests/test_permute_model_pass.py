"""--permute global's model pass: never worse than its start on its own objective, recomputed here from an
untouched dense copy; the result stays N:M in the stored permuted order."""
import pytest
import torch

from compress.permute.fold import is_permutation
from compress.prune.apply import PruneConfig, prune_model
from tests.test_engine import tiny


def _objective(model, dense_hidden, ids) -> float:
    """Mean over tokens of 1 - cos(final hidden, dense final hidden), from the model as it is."""
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state
    return float((1 - torch.nn.functional.cosine_similarity(hidden, dense_hidden, dim=-1)).mean())


@pytest.mark.parametrize("method,pattern", [("wanda", "2:4"), ("ria", "2:4"), ("sparsegpt", "2:4"), ("wanda", "6:8")])
def test_model_pass_is_never_worse_than_its_start(method, pattern):
    ids = torch.randint(0, 320, (8, 32), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense_hidden = tiny().model(input_ids=ids).last_hidden_state
    heuristic = tiny()
    prune_model(heuristic, PruneConfig(method=method, pattern=pattern, permute="heuristic"), ids)
    start = _objective(heuristic, dense_hidden, ids)

    model, notes = tiny(), []
    config = PruneConfig(method=method, pattern=pattern, permute="global", perm_block_size=16, perm_model_steps=12,
                         perm_windows=2)
    result = prune_model(model, config, ids, on_note=notes.append)
    report, end = result.model_pass, _objective(model, dense_hidden, ids)
    assert report["objective_start"] == pytest.approx(start, rel=1e-4)  # the sequential pass is the heuristic's
    assert end <= start + 1e-7
    assert end == pytest.approx(report["objective_learned"] if report["kept"] == "learned" else start, rel=1e-4)
    assert (report["kept"] == "learned") == (report["objective_learned"] < report["objective_start"])
    if method == "sparsegpt":  # learned on SparseGPT's updated weights: re-pruned and masked candidates, best kept
        assert set(report["candidates"]) == {"re-pruned", "masked"}
        assert report["objective_learned"] == min(report["candidates"].values())
    assert not any("forward" in vars(module) for module in model.modules())  # the pass's patches are gone
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert len([n for n in notes if ": step " in n]) == 4 and "kept the" in notes[-1]
    n, m = map(int, pattern.split(":"))
    assert result.overall_sparsity == pytest.approx(1 - n / m)
    named = dict(model.named_modules())
    for name, perm in result.permutations.items():
        weight = named[name].weight
        assert is_permutation(perm, weight.shape[1])
        kept = (weight[:, perm] != 0).unflatten(1, (-1, m)).sum(-1)
        assert int(kept.max()) <= n


def test_model_pass_learns_on_a_tiny_model():
    """On this draw the pass finds a better permutation than the heuristic and keeps it."""
    ids = torch.randint(0, 320, (8, 32), generator=torch.Generator().manual_seed(1))
    config = PruneConfig(method="wanda", pattern="2:4", permute="global", perm_block_size=16, perm_model_steps=12)
    report = prune_model(tiny(), config, ids).model_pass
    assert report["kept"] == "learned" and report["channels_moved"] > 0
    assert report["objective_learned"] < report["objective_start"]


def test_a_worse_result_is_not_kept(monkeypatch):
    """A learner that returns random block permutations: its result scores worse than the heuristic start, and
    the model is left exactly as the sequential pass pruned it."""
    import compress.prune.permute_pass as permute_pass

    def random_learner(base, plans, *args, **kwargs):
        g = torch.Generator().manual_seed(0)
        perms = [plan.permutation(torch.stack([torch.randperm(plan.size, generator=g) for _ in range(plan.units)]))
                 for plan in plans]
        return perms, {"steps": 0, "loss_first": None, "loss_last": None, "channels_moved": -1}

    monkeypatch.setattr(permute_pass, "learn_model_permutations", random_learner)
    ids = torch.randint(0, 320, (8, 32), generator=torch.Generator().manual_seed(1))
    heuristic = tiny()
    prune_model(heuristic, PruneConfig(method="wanda", pattern="2:4", permute="heuristic"), ids)
    model = tiny()
    config = PruneConfig(method="wanda", pattern="2:4", permute="global", perm_block_size=16)
    report = prune_model(model, config, ids).model_pass
    assert report["kept"] == "start" and report["objective_learned"] > report["objective_start"]
    for (name, p), q in zip(model.named_parameters(), heuristic.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("checkpointed", [True, False])
def test_checkpointed_per_linear_forward_equals_the_groups_substituted_whole(checkpointed):
    """The pass's memory-saving forward (each Linear's relaxed rows computed in its own forward, decoder layers
    checkpointed) gives the loss and logit gradients of the per-layer learner's formulation: every group's
    relaxed weight built whole (in the start order) and substituted by name."""
    from compress.permute.global_mode import GroupPlan, block_layout, relaxed_weight
    from compress.permute.model_pass import ModelPlan, cosine_error, final_hidden, relaxed_forwards
    from compress.permute.relaxed import harden, one_hot, sinkhorn, straight_through

    model = tiny()
    base, g = model.model, torch.Generator().manual_seed(3)
    ids = torch.randint(0, 320, (2, 16), generator=g)
    with torch.no_grad():
        target = base(ids).last_hidden_state + 0.1 * torch.randn(2, 16, base.config.hidden_size, generator=g)
    groups = [["layers.0.self_attn.q_proj", "layers.0.self_attn.k_proj", "layers.0.self_attn.v_proj"],
              ["layers.1.mlp.gate_proj", "layers.1.mlp.up_proj"], ["layers.1.mlp.down_proj"]]
    model_plans, group_plans, logits = [], [], []
    for names in groups:
        weight = torch.cat([base.get_submodule(n).weight.detach() for n in names])
        score = weight.abs() * torch.rand(weight.shape[1], generator=g)
        start = torch.randperm(weight.shape[1], generator=g)
        size, units = block_layout(weight.shape[1], 4, 16)
        rows = [base.get_submodule(n).weight.shape[0] for n in names]
        params = [n + ".weight" for n in names]
        model_plans.append(ModelPlan(params, rows, weight, score, start, units))
        group_plans.append(GroupPlan(params, rows, weight[:, start], score[:, start], start, units))
        logits.append(torch.randn(int(units.max()) + 1, size, size, generator=g).requires_grad_())

    def straight(tau=0.5):
        return [straight_through(one_hot(harden(s), s.dtype), s) for s in (sinkhorn(lg, tau) for lg in logits)]

    current = straight()
    with torch.enable_grad(), relaxed_forwards(base, model_plans, current, 2, 4, 0.2, checkpointed):
        loss = cosine_error(base(ids, use_cache=False).last_hidden_state, target)
        ours = torch.autograd.grad(loss, logits)
    weights = {}
    for plan, p in zip(group_plans, straight()):
        weights.update(zip(plan.params, relaxed_weight(plan, p, 2, 4, 0.2, True).split(plan.rows)))
    reference = cosine_error(final_hidden(base, weights, ids), target)
    expected = torch.autograd.grad(reference, logits)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert all(float(e.abs().max()) > 0 for e in expected)
    for a, b in zip(ours, expected):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
