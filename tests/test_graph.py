"""compress graph on MUTAG (CPU): the GPS layer against PyG's GPSConv, pruning at zero is the identity,
FLOPs fall by the amount the shapes say, importance beats random, determinism, save/load, bad input."""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("torch_geometric")
pytest.importorskip("grakel")

from compress.graph.data import load_graphs  # noqa: E402
from compress.graph.flops import count_flops  # noqa: E402
from compress.graph.model import GPSLayer, GraphGPS, GraphModelConfig  # noqa: E402
from compress.graph.prune import GraphPruneSpec, prune_graph_model, weight_targets  # noqa: E402
from compress.graph.train import TrainConfig, batches, train  # noqa: E402

C, H, LAYERS = 32, 4, 2


@pytest.fixture(scope="module")
def mutag(tmp_path_factory):
    return load_graphs("mutag", seed=0, cache=tmp_path_factory.mktemp("graphs"))


@pytest.fixture(scope="module")
def trained(mutag):
    config = GraphModelConfig(encoder=mutag.encoder, node_dims=mutag.node_dims, edge_dims=mutag.edge_dims,
                              num_classes=2, channels=C, pe_dim=8, heads=[H] * LAYERS, head_dim=C // H,
                              train_epochs=20, data="mutag")
    torch.manual_seed(0)
    return train(GraphGPS(config), mutag.train, TrainConfig(epochs=20, seed=0))


@pytest.fixture(scope="module")
def calibration(mutag):
    return batches(mutag.train[:96], 48)


@pytest.fixture(scope="module")
def held_out(mutag):
    return batches(mutag.valid + mutag.test, 64)


def _loss(model, batch_list) -> float:
    with torch.no_grad():
        return sum(torch.nn.functional.cross_entropy(model(b), b.y, reduction="sum").item()
                   for b in batch_list) / sum(b.num_graphs for b in batch_list)


def _outputs(model, batch_list) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(b) for b in batch_list])


def test_layer_equals_pyg_gpsconv(mutag):
    from torch_geometric.nn import GINEConv, GPSConv

    torch.manual_seed(1)
    ours = GPSLayer(C, H, C // H, dropout=0.0)
    theirs = GPSConv(C, GINEConv(torch.nn.Sequential(torch.nn.Linear(C, C), torch.nn.ReLU(), torch.nn.Linear(C, C))),
                     heads=H, attn_type="multihead")
    for norm in (ours.norm1, ours.norm2, ours.norm3):  # running statistics that are not the identity
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.normal_()
        norm.bias.data.normal_()
    with torch.no_grad():
        theirs.conv.load_state_dict(ours.conv.state_dict())
        theirs.mlp[0].load_state_dict(ours.mlp[0].state_dict())
        theirs.mlp[3].load_state_dict(ours.mlp[3].state_dict())
        for mine, pyg in ((ours.norm1, theirs.norm1), (ours.norm2, theirs.norm2), (ours.norm3, theirs.norm3)):
            pyg.module.load_state_dict(mine.state_dict())
        a = ours.attn
        theirs.attn.in_proj_weight.copy_(torch.cat([a.q.weight, a.k.weight, a.v.weight]))
        theirs.attn.in_proj_bias.copy_(torch.cat([a.q.bias, a.k.bias, a.v.bias]))
        theirs.attn.out_proj.load_state_dict(a.o.state_dict())
    ours.eval(), theirs.eval()
    batch = batches(mutag.train[:16], 16)[0]
    x = torch.randn(batch.num_nodes, C)
    edge_attr = torch.randn(batch.edge_index.shape[1], C)
    with torch.no_grad():
        expected = theirs(x, batch.edge_index, batch.batch, edge_attr=edge_attr)
        got = ours(x, batch.edge_index, edge_attr, batch.batch)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_all_fractions_zero_leaves_the_outputs_unchanged(trained, calibration, held_out):
    pruned, masks, _ = prune_graph_model(trained, GraphPruneSpec(), calibration)
    assert masks == {}
    assert torch.equal(_outputs(pruned, held_out), _outputs(trained, held_out))


def _attention_flops(batch_list, heads: list[int], keep: float | None = None) -> int:
    """Matrix-product FLOPs of the attention blocks, from the shapes alone: q/k/v/o projections of the
    nodes that enter attention, scores and values over each batch padded to its largest graph, plus the
    token scorers (every node, every layer) when tokens are pruned."""
    total = 0
    for batch in batch_list:
        sizes = torch.bincount(batch.batch).tolist()
        if keep is not None:
            sizes = [max(1, math.ceil(keep * n)) for n in sizes]
        n, b, widest = sum(sizes), len(sizes), max(sizes)
        for h in heads:
            if h:
                inner = h * (C // H)
                total += 2 * n * C * inner * 4 + 2 * 2 * b * widest * widest * inner
            if keep is not None:
                total += 2 * batch.num_nodes * C
    return total


@pytest.mark.parametrize("spec, heads, keep", [
    (GraphPruneSpec(heads=0.5), [2] * LAYERS, None),
    (GraphPruneSpec(layers=0.5), None, None),
    (GraphPruneSpec(tokens=0.5), [H] * LAYERS, 0.5),
])
def test_each_dimension_cuts_counted_flops_by_the_expected_amount(trained, calibration, held_out, spec, heads, keep):
    pruned, _, report = prune_graph_model(trained, spec, calibration)
    if heads is None:  # layers: one attention block gone, which one is the model's choice
        assert len(report["layers_removed"]) == 1
        heads = [0 if i in report["layers_removed"] else H for i in range(LAYERS)]
    assert pruned.config.heads == heads
    before, after = count_flops(trained, held_out), count_flops(pruned, held_out)
    expected = _attention_flops(held_out, [H] * LAYERS) - _attention_flops(held_out, heads, keep)
    assert before["structural_flops"] - after["structural_flops"] == expected
    assert expected > 0.1 * before["structural_flops"]


def test_weights_cut_nonzero_flops_not_structural(trained, calibration, held_out):
    pruned, masks, _ = prune_graph_model(trained, GraphPruneSpec(weights=0.5), calibration)
    before, after = count_flops(trained, held_out), count_flops(pruned, held_out)
    assert after["structural_flops"] == before["structural_flops"]
    rows = sum(b.num_nodes for b in held_out)
    dense_linear = 0
    for name, linear in weight_targets(pruned).items():
        assert (linear.weight == 0).sum(1).eq(linear.in_features // 2).all(), name  # half of every row
        dense_linear += 2 * rows * linear.in_features * linear.out_features  # every target Linear sees every node
    assert before["structural_flops"] - after["nonzero_flops"] == dense_linear // 2
    assert len(masks) == len(weight_targets(pruned))


@pytest.mark.parametrize("fields", [{"tokens": 0.5}, {"heads": 0.5}, {"weights": 0.5}])
def test_importance_beats_random(trained, calibration, held_out, fields):
    # without the BatchNorm re-estimate, which helps both alike, the choice of what to remove is all that differs
    chosen, _, _ = prune_graph_model(trained, GraphPruneSpec(**fields, recalibrate=False), calibration)
    random = [prune_graph_model(trained, GraphPruneSpec(**fields, random=True, seed=s, recalibrate=False), calibration)[0]
              for s in range(3)]
    assert _loss(chosen, held_out) < sum(_loss(r, held_out) for r in random) / len(random)


def test_recalibrated_norms_match_a_fresh_pass(trained, calibration):
    """A re-estimated running mean is the average over calibration batches of the batch means of the norm's
    input, as it flows in a training-mode pass (read here from a copy)."""
    import copy

    pruned, _, _ = prune_graph_model(trained, GraphPruneSpec(heads=0.5), calibration)
    probe, seen = copy.deepcopy(pruned).train(), []
    probe.layers[0].norm2.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        for batch in calibration:
            probe(batch)
    norm = pruned.layers[0].norm2
    per_batch_mean = torch.stack([x.mean(0) for x in seen])
    torch.testing.assert_close(norm.running_mean, per_batch_mean.mean(0), atol=1e-5, rtol=1e-4)


def test_masks_are_deterministic_under_a_seed(trained, calibration):
    spec = dict(tokens=0.5, heads=0.5, layers=0.5, weights=0.5)

    def state(**extra):
        model = prune_graph_model(trained, GraphPruneSpec(**spec, **extra), calibration)[0]
        return {k: v.clone() for k, v in model.state_dict().items()}

    def same(a, b):
        return a.keys() == b.keys() and all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)

    assert same(state(), state())
    assert same(state(random=True, seed=3), state(random=True, seed=3))
    assert not same(state(random=True, seed=3), state(random=True, seed=4))


def test_pruned_model_saves_and_reloads(trained, calibration, held_out, tmp_path):
    from compress.graph.checkpoint import load_graph_model, save_graph_model

    pruned, _, _ = prune_graph_model(trained, GraphPruneSpec(tokens=0.5, heads=0.5, layers=0.5, weights=0.5),
                                     calibration)
    save_graph_model(pruned, tmp_path / "out", {"kind": "test"})
    loaded = load_graph_model(tmp_path / "out")
    assert loaded.config.heads == pruned.config.heads and loaded.config.token_keep == 0.5
    assert torch.equal(_outputs(loaded, held_out), _outputs(pruned, held_out))
