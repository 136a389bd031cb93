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
