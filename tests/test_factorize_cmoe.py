"""Training-free factorize (shared neurons, balanced co-activation experts, the analytic router): each piece
against a brute-force recomputation of its definition; shared neurons always run; 100% active is the dense
model; the routers stay balanced on fresh tokens; shared parts survive the stock MoE exports."""
from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from compress.factorize import FactorizeConfig, FactorizedMLP, factorize_model, factorized_mlps
from compress.factorize.analytic import TEMPERATURE, analytic_router, expert_mass
from compress.factorize.carve import balanced_assignment, carve, neuron_markers
from compress.factorize.config import translate_active
from compress.factorize.loads import count_picks, max_load_ratio
from tests.test_factorize import CALIBRATION, IDS, _model

FRESH = torch.randint(0, 320, (8, 64), generator=torch.Generator().manual_seed(7))
MORE_CALIBRATION = torch.randint(0, 320, (16, 64), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("active, expected", [(0.25, (14, 2, 2)), (0.5, (12, 4, 4)), (0.75, (10, 6, 6)),
                                              (1.0, (16, 16, 0))])
def test_active_share_translates_into_experts_top_k_and_shared(active, expected):
    config = FactorizeConfig(active=active)
    assert (config.experts, config.top_k, config.shared) == expected == tuple(translate_active(active).values())
    assert config.active_share == pytest.approx(active)
    assert FactorizeConfig().active == 0.5  # nothing given: the default share
    assert FactorizeConfig(experts=4, top_k=1).active is None  # explicit experts: no translation


def test_balanced_assignment_is_the_cheapest_equal_split_by_brute_force():
    cost = torch.rand(6, 3, generator=torch.Generator().manual_seed(0))
    assign = balanced_assignment(cost, 2)
    assert torch.equal(torch.bincount(assign, minlength=3), torch.tensor([2, 2, 2]))
    best = min(sum(cost[i, c].item() for i, c in enumerate(labels))
               for labels in itertools.product(range(3), repeat=6) if all(labels.count(c) == 2 for c in range(3)))
    assert sum(cost[i, c].item() for i, c in enumerate(assign.tolist())) == pytest.approx(best)


def test_carve_shares_the_most_active_neurons_and_splits_the_rest_evenly():
    torch.manual_seed(0)
    x, gate, up = torch.randn(300, 16), torch.randn(40, 16), torch.randn(40, 16)
    markers = neuron_markers(x, gate, up, torch.nn.SiLU(), top=6)
    # brute force: per token, the 6 largest |silu(x̂·ĝ)·(x̂·û)|
    for t in (0, 17, 299):
        xn = x[t] / x[t].norm()
        score = [abs(F.silu(xn @ (gate[j] / gate[j].norm())) * (xn @ (up[j] / up[j].norm()))) for j in range(40)]
        assert set(torch.nonzero(markers[t]).flatten().tolist()) == set(sorted(range(40), key=lambda j: -score[j])[:6])
    carving = carve(markers, shared_neurons=8, experts=4)
    rates = markers.float().mean(0)
    assert set(carving.shared.tolist()) == set(rates.argsort(descending=True)[:8].tolist())
    assert carving.groups.shape == (4, 8)
    assert torch.equal(torch.cat([carving.shared, carving.groups.flatten()]).sort().values, torch.arange(40))
    for e in range(4):
        assert carving.representatives[e] in carving.groups[e]


def test_analytic_router_is_the_ridge_regression_of_standardised_expert_mass():
    torch.manual_seed(1)
    x, gate, up, down = torch.randn(400, 12), torch.randn(24, 12), torch.randn(24, 12), torch.randn(12, 24)
    groups = torch.randperm(24).reshape(4, 6)
    mass = expert_mass(x, gate, up, down, torch.nn.SiLU(), groups)
    for t, e in ((0, 0), (5, 3), (399, 2)):  # brute force, neuron by neuron
        expected = sum(abs(F.silu(gate[j] @ x[t]) * (up[j] @ x[t])) * down[:, j].norm() for j in groups[e].tolist())
        assert mass[t, e].item() == pytest.approx(expected.item(), rel=1e-5)
    router = analytic_router(x, mass, top_k=2, balance=False)
    # independent solution: least squares on the ridge-augmented system [X; √λ I] w = [z; 0]
    z = (mass - mass.mean(0)) / mass.std(0)
    lam = 1e-2 * x.pow(2).mean() * x.shape[0]
    augmented = torch.cat([x.double(), lam.sqrt().double() * torch.eye(12, dtype=torch.double)])
    target = torch.cat([z.double(), torch.zeros(12, 4, dtype=torch.double)])
    w = torch.linalg.lstsq(augmented, target).solution.T.float()
    w = w * (TEMPERATURE / (x @ w.T).std())
    torch.testing.assert_close(router.weight, w, atol=1e-5, rtol=1e-4)


def test_shared_neurons_run_for_every_token_whatever_the_router_picks():
    torch.manual_seed(2)
    hidden, n = 16, 48
    gate, up, down = (torch.nn.Linear(hidden, n, bias=False), torch.nn.Linear(hidden, n, bias=False),
                      torch.nn.Linear(n, hidden, bias=False))
    shared, groups = torch.arange(0, 48, 6), torch.tensor([j for j in range(48) if j % 6]).reshape(5, 8)
    moe = FactorizedMLP.from_dense(gate, up, down, torch.nn.SiLU(), groups, top_k=1, shared=shared)
    torch.nn.init.normal_(moe.router.weight)
    x = torch.randn(30, hidden)
    with torch.no_grad():
        expected_shared = (F.silu(x @ gate.weight[shared].T) * (x @ up.weight[shared].T)) @ down.weight[:, shared].T
        moe.down.zero_()  # whatever the router picks adds nothing: only the shared neurons remain
        torch.testing.assert_close(moe(x), expected_shared, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_every_neuron_active_is_the_dense_model(family):
    model = _model(family)
    with torch.no_grad():
        dense = model(IDS).logits
    factorize_model(model, FactorizeConfig(active=1.0), CALIBRATION)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, dense, atol=1e-5, rtol=0)


def test_factorized_layers_hold_the_most_active_neurons_as_shared_and_stay_balanced_on_fresh_tokens():
    model = _model("llama")
    factorize_model(model, FactorizeConfig(active=0.25), MORE_CALIBRATION)
    with count_picks(model) as counts, torch.no_grad():
        model(FRESH)
    for name, moe in factorized_mlps(model).items():
        assert moe.shared_width == 128 * 2 // 16 and moe.num_experts == 14 and moe.top_k == 2
        assert counts[name].sum() == FRESH.numel() * 2
        assert max_load_ratio(counts[name]) <= 2.0, (name, counts[name])


def test_without_balancing_the_routers_are_less_even():
    loads = {}
    for balance in (True, False):
        model = _model("llama")
        factorize_model(model, FactorizeConfig(active=0.25, balance=balance), MORE_CALIBRATION)
        with count_picks(model) as counts, torch.no_grad():
            model(FRESH)
        loads[balance] = max(max_load_ratio(c) for c in counts.values())
    assert loads[True] < loads[False]


@pytest.mark.parametrize("family, sliding, target", [("llama", None, "Qwen2MoeForCausalLM"),
                                                     ("qwen2", None, "Qwen2MoeForCausalLM"),
                                                     ("qwen3", None, "Qwen3MoeForCausalLM"),
                                                     ("mistral", 16, "MixtralForCausalLM")])
def test_shared_neurons_survive_the_stock_moe_export(family, sliding, target, tmp_path):
    from transformers import AutoModelForCausalLM

    from compress.factorize.export import save_moe

    model = _model(family)
    if sliding:
        model.config.sliding_window = sliding
    factorize_model(model, FactorizeConfig(active=0.5), CALIBRATION)
    save_moe(model, None, tmp_path / "moe", {})
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "moe", dtype=torch.float32).eval()
    assert type(loaded).__name__ == target
    moe = factorized_mlps(model)["model.layers.0.mlp"]
    if target == "Qwen2MoeForCausalLM":
        assert loaded.config.shared_expert_intermediate_size == moe.shared_width == 32
        assert loaded.config.moe_intermediate_size == 8
        assert "shared_neurons" not in json.loads((tmp_path / "moe" / "compression.json").read_text())
    else:  # no shared expert in the architecture: the shared neurons are in every expert
        width = loaded.config.moe_intermediate_size if target == "Qwen3MoeForCausalLM" else loaded.config.intermediate_size
        assert width == 32 + 8
        note = json.loads((tmp_path / "moe" / "compression.json").read_text())["shared_neurons"]
        assert f"{4 * (32 + 8)} FFN neurons run per token instead of {32 + 4 * 8}" in note
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, model(IDS).logits, atol=1e-5, rtol=0)


def test_refit_is_the_ridge_solution_around_the_sliced_weights_and_lowers_the_error():
    from compress.factorize.refit import refit_down

    torch.manual_seed(4)
    hidden, n = 12, 32
    gate, up, down = (torch.nn.Linear(hidden, n, bias=False), torch.nn.Linear(hidden, n, bias=False),
                      torch.nn.Linear(n, hidden, bias=False))
    shared, groups = torch.arange(0, 8), torch.arange(8, 32).reshape(4, 6)
    moe = FactorizedMLP.from_dense(gate, up, down, torch.nn.SiLU(), groups, top_k=2, shared=shared)
    torch.nn.init.normal_(moe.router.weight)
    x = torch.randn(200, hidden)
    with torch.no_grad():
        teacher = down(F.silu(gate(x)) * up(x))
        before = (moe(x) - teacher).pow(2).sum()
        # independent: features built token by token from the dense weights and the routing definition
        probs = torch.softmax(x @ moe.router.weight.T, -1)
        rows = []
        for t in range(200):
            chosen = probs[t].topk(2).indices
            h = F.silu(gate.weight @ x[t]) * (up.weight @ x[t])
            row = [h[shared]]
            for e in range(4):
                w = probs[t, e] / probs[t, chosen].sum() if e in chosen else 0.0
                row.append(h[groups[e]] * w)
            rows.append(torch.cat(row))
        features = torch.stack(rows).double()
        start = torch.cat([down.weight[:, shared]] + [down.weight[:, groups[e]] * 2 for e in range(4)], 1).double()
        lam = 1e-2 * (features * features).sum(0).mean()
        augmented = torch.cat([features, lam.sqrt() * torch.eye(32, dtype=torch.double)])
        target = torch.cat([teacher.double() - features @ start.T, torch.zeros(32, hidden, dtype=torch.double)])
        expected = start + torch.linalg.lstsq(augmented, target).solution.T
        refit_down(moe, x, teacher, ridge=1e-2)
        got = torch.cat([moe.shared_down] + [moe.down[e] for e in range(4)], 1)
        torch.testing.assert_close(got.double(), expected, atol=1e-4, rtol=1e-4)
        assert (moe(x) - teacher).pow(2).sum() < before
