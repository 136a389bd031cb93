"""FactorLLM: a dense FFN split into experts computes the dense function exactly when every expert runs
with a zero router; PAR labels equal a brute-force search; a trained router beats a random one; the
Mixtral export reloads with stock transformers and computes the in-memory model."""
from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from compress.factorize import FactorizeConfig, FactorizedMLP, factorize_model, factorized_mlps
from compress.factorize.router import RouterTraining, par_labels, routed_error, train_router
from compress.factorize.split import activity_pattern, balanced_kmeans, split_neurons
from tests.conftest import tiny_llama_config

SMALL = dict(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256)


def _model(family: str):
    import transformers as tf

    torch.manual_seed(0)
    if family == "llama":
        return tf.LlamaForCausalLM(tiny_llama_config()).eval()
    if family == "mistral":
        return tf.MistralForCausalLM(tf.MistralConfig(**SMALL, sliding_window=None)).eval()
    if family == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(**SMALL)).eval()
    if family == "qwen3":
        return tf.Qwen3ForCausalLM(tf.Qwen3Config(**SMALL, head_dim=16)).eval()
    if family == "gemma":
        return tf.GemmaForCausalLM(tf.GemmaConfig(**SMALL, head_dim=16)).eval()
    if family == "gemma3":
        return tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**SMALL, head_dim=16, sliding_window=8,
                                                         query_pre_attn_scalar=16)).eval()
    raise AssertionError(family)


IDS = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(1))
CALIBRATION = torch.randint(0, 320, (4, 32), generator=torch.Generator().manual_seed(2))


SPLITS = ["contiguous", "random", "cluster", "coactivation"]
CASES = [("llama", s) for s in SPLITS] + [("gemma3", s) for s in SPLITS] + [
    ("mistral", "cluster"), ("qwen2", "random"), ("qwen3", "coactivation"), ("gemma", "contiguous")]


@pytest.mark.parametrize("family, split", CASES)
def test_every_expert_with_a_zero_router_is_the_dense_model(family, split):
    model = _model(family)
    with torch.no_grad():
        dense = model(IDS).logits
    factorize_model(model, FactorizeConfig(experts=4, top_k=4, split=split, steps=0), CALIBRATION)
    assert len(factorized_mlps(model)) == 2
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, dense, atol=1e-5, rtol=0)
        for moe in factorized_mlps(model).values():
            moe.top_k = 1  # guard: fewer experts do change the function
        assert (model(IDS).logits - dense).abs().max() > 1e-2


def test_fine_grained_experts_keep_the_dense_function_and_split_neurons_once():
    model = _model("gemma3")
    with torch.no_grad():
        dense = model(IDS).logits
    factorize_model(model, FactorizeConfig(experts=4, top_k=4, granularity=4, split="cluster", steps=0))
    for moe in factorized_mlps(model).values():
        assert moe.num_experts == 16 and moe.top_k == 16
        assert torch.equal(moe.groups.flatten().sort().values, torch.arange(128))
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, dense, atol=1e-5, rtol=0)


@pytest.mark.parametrize("top_k,scale,fold", [(1, "top-k", 1), (2, "top-k", 2), (1, "experts", 4)])
def test_expert_weights_are_slices_of_the_dense_weights(top_k, scale, fold):
    model = _model("llama")
    mlp = copy.deepcopy(model.model.layers[0].mlp)
    factorize_model(model, FactorizeConfig(experts=4, top_k=top_k, split="random", router="par", steps=0, scale=scale))
    moe = model.model.layers[0].mlp
    for e, neurons in enumerate(moe.groups):
        assert torch.equal(moe.gate_up[e, :32], mlp.gate_proj.weight[neurons])
        assert torch.equal(moe.gate_up[e, 32:], mlp.up_proj.weight[neurons])
        assert torch.equal(moe.down[e], mlp.down_proj.weight[:, neurons] * fold)


@pytest.mark.parametrize("scale", ["top-k", "experts"])
def test_routed_output_is_the_weighted_sum_of_the_chosen_neuron_groups(scale):
    """Against the dense weights directly: token t gets Σ_e w_te · (fold) · down[:, g_e] (act(gate[g_e] x) · up[g_e] x)."""
    torch.manual_seed(3)
    hidden, experts, m, top_k = 16, 4, 8, 2
    gate, up, down = (torch.nn.Linear(hidden, experts * m, bias=False), torch.nn.Linear(hidden, experts * m, bias=False),
                      torch.nn.Linear(experts * m, hidden, bias=False))
    groups = torch.randperm(experts * m).reshape(experts, m).sort(1).values
    fold = top_k if scale == "top-k" else experts
    moe = FactorizedMLP.from_dense(gate, up, down, torch.nn.SiLU(), groups, top_k, fold)
    torch.nn.init.normal_(moe.router.weight)
    x = torch.randn(50, hidden)
    with torch.no_grad():
        probs = torch.softmax(x @ moe.router.weight.T, -1)
        expected = torch.zeros(50, hidden)
        for t in range(50):
            chosen = probs[t].topk(top_k).indices
            for e in chosen.tolist():
                g = groups[e]
                neurons = F.silu(gate.weight[g] @ x[t]) * (up.weight[g] @ x[t])
                expected[t] += probs[t, e] / probs[t, chosen].sum() * fold * (down.weight[:, g] @ neurons)
        torch.testing.assert_close(moe(x), expected, atol=1e-5, rtol=1e-5)
        if hasattr(F, "grouped_mm"):  # the GPU path, run here on the CPU kernels
            weights, indices = torch.topk(probs, top_k, -1)
            torch.testing.assert_close(moe.grouped(x, weights / weights.sum(-1, keepdim=True), indices), expected,
                                       atol=1e-5, rtol=1e-5)


def _moe_and_data(experts=4, top_k=2, hidden=16, m=8, tokens=600, seed=0):
    torch.manual_seed(seed)
    gate, up, down = (torch.nn.Linear(hidden, experts * m, bias=False), torch.nn.Linear(hidden, experts * m, bias=False),
                      torch.nn.Linear(experts * m, hidden, bias=False))
    groups = torch.arange(experts * m).reshape(experts, m)
    moe = FactorizedMLP.from_dense(gate, up, down, torch.nn.SiLU(), groups, top_k)
    x = torch.randn(tokens, hidden)
    with torch.no_grad():
        teacher = down(F.silu(gate(x)) * up(x))
    return moe, x, teacher


def test_par_labels_are_the_best_subsets_by_brute_force():
    moe, x, teacher = _moe_and_data(experts=6, top_k=2, tokens=40)
    labels = par_labels(moe, x, teacher)
    for t in range(x.shape[0]):
        outputs = [moe.expert(e, x[t:t + 1])[0] for e in range(6)]
        errors = {pair: (sum(outputs[e] for e in pair) / 2 - teacher[t]).pow(2).sum().item()
                  for pair in itertools.combinations(range(6), 2)}
        best = min(errors, key=errors.get)
        assert set(labels[t].tolist()) == set(best)


def test_greedy_labels_start_from_the_best_expert_and_beat_a_typical_subset():
    moe, x, teacher = _moe_and_data(experts=16, top_k=4, m=2, tokens=50)  # C(16, 4) = 1820: greedy
    labels = par_labels(moe, x, teacher)
    assert all(len(set(row.tolist())) == 4 for row in labels)
    outs = moe.all_experts(x)
    assert torch.equal(labels[:, 0], (outs - teacher[:, None]).pow(2).sum(-1).argmin(1))
    subsets = torch.tensor(list(itertools.combinations(range(16), 4)))
    every = (outs[:, subsets].mean(2) - teacher[:, None]).pow(2).sum(-1)  # (tokens, 1820)
    chosen = (outs.gather(1, labels[..., None].expand(-1, -1, outs.shape[-1])).mean(1) - teacher).pow(2).sum(-1)
    rank = (every < chosen[:, None] - 1e-6).float().mean(1)  # share of subsets strictly better
    assert rank.mean() < 0.05


def _random_layer(experts=4, hidden=32, m=16, tokens=6000):
    """A random gated MLP and Gaussian inputs: which expert best stands in for the FFN depends on x."""
    torch.manual_seed(0)
    gate, up = torch.nn.Linear(hidden, experts * m, bias=False), torch.nn.Linear(hidden, experts * m, bias=False)
    down = torch.nn.Linear(experts * m, hidden, bias=False)
    groups = torch.arange(experts * m).reshape(experts, m)
    x = torch.randn(tokens, hidden)
    with torch.no_grad():
        teacher = down(F.silu(gate(x)) * up(x))
    return gate, up, down, groups, x, teacher


def test_a_trained_router_beats_a_random_router_and_agrees_with_held_out_labels():
    gate, up, down, groups, x, teacher = _random_layer()
    trained = FactorizedMLP.from_dense(gate, up, down, torch.nn.SiLU(), groups, 1)
    fit = train_router(trained, x[:5000], teacher[:5000], RouterTraining(steps=300, lr=1e-2, seed=0))
    random = FactorizedMLP.from_dense(gate, up, down, torch.nn.SiLU(), groups, 1)
    torch.nn.init.normal_(random.router.weight, generator=torch.Generator().manual_seed(0))
    fresh, fresh_teacher = x[5000:], teacher[5000:]  # never seen in training
    assert routed_error(trained, fresh, fresh_teacher) < 0.9 * routed_error(random, fresh, fresh_teacher)
    labels = par_labels(trained, fresh, fresh_teacher)[:, 0]
    agreement = (trained.router(fresh).argmax(1) == labels).float().mean().item()
    assert agreement > 0.3 > fit.chance_agreement  # 1000 tokens: chance 0.25 ± 0.014
    assert fit.held_out_agreement > 0.3
    assert fit.losses[-1]["par"] < fit.losses[0]["par"]
    assert len(fit.load) == 4 and abs(sum(fit.load) - 1) < 1e-6


def test_router_training_is_deterministic_under_a_seed():
    gate, up, down, groups, x, teacher = _random_layer(tokens=800)
    weights = []
    for _ in range(2):
        moe = FactorizedMLP.from_dense(gate, up, down, torch.nn.SiLU(), groups, 2)
        train_router(moe, x, teacher, RouterTraining(steps=20, seed=3))
        weights.append(moe.router.weight.clone())
    assert torch.equal(*weights)


def test_balanced_kmeans_gives_equal_clusters_and_finds_separated_ones():
    torch.manual_seed(0)
    centres = torch.eye(8)[:4] * 10
    points = centres.repeat_interleave(16, 0) + 0.1 * torch.randn(64, 8)
    groups = balanced_kmeans(points[torch.randperm(64)], 4, seed=0)
    assert groups.shape == (4, 16) and torch.equal(groups.flatten().sort().values, torch.arange(64))
    shuffled = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    groups = balanced_kmeans(points[shuffled], 4, seed=1)
    for row in groups:
        assert len(set((shuffled[row] // 16).tolist())) == 1


def test_coactivation_marks_the_top_q_neurons_of_every_token():
    torch.manual_seed(0)
    gate, up = torch.nn.Linear(8, 40, bias=False), torch.nn.Linear(8, 40, bias=False)
    x = torch.randn(30, 8)
    active = activity_pattern(x, gate, up, torch.nn.SiLU(), q=0.1)
    assert active.shape == (40, 30) and torch.equal(active.sum(0), torch.full((30,), 4.0))
    h = (F.silu(gate(x)) * up(x)).abs()
    assert torch.equal(active.T.bool(), h >= h.sort(1, descending=True).values[:, 3:4])
    groups = split_neurons("coactivation", 40, 4, activity=active)
    assert torch.equal(groups.flatten().sort().values, torch.arange(40))


@pytest.mark.parametrize("family, target", [("llama", "MixtralForCausalLM"), ("qwen2", "Qwen2MoeForCausalLM"),
                                            ("qwen3", "Qwen3MoeForCausalLM")])
def test_stock_moe_export_reloads_with_stock_transformers_and_matches(family, target, tmp_path):
    from transformers import AutoModelForCausalLM

    from compress.factorize.export import save_moe

    model = _model(family)
    factorize_model(model, FactorizeConfig(experts=4, top_k=2, split="cluster", router="par", steps=20), CALIBRATION)
    save_moe(model, None, tmp_path / "moe", {"note": "test"})
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "moe", dtype=torch.float32)
    assert type(loaded).__name__ == target and loaded.config.num_experts_per_tok == 2
    assert any(m.router.weight.abs().sum() > 0 for m in factorized_mlps(model).values())
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, model(IDS).logits, atol=1e-5, rtol=0)
    from compress.export.marker import KEY, SIGNATURE

    # the manifest as given, marked as this tool's output (export.marker)
    assert json.loads((tmp_path / "moe" / "compression.json").read_text()) == {KEY: SIGNATURE, "note": "test"}


def test_stage_b_trains_only_experts_and_routers_and_moves_toward_the_dense_model():
    from compress.factorize.finetune import teacher_targets

    model = _model("llama")
    with torch.no_grad():
        dense_logits = model(CALIBRATION).logits
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if ".mlp." not in n}
    config = FactorizeConfig(experts=4, top_k=1, split="cluster", router="par", steps=20, train="router+experts", expert_steps=40,
                             expert_lr=1e-3, expert_batch=4)
    stage_a = copy.deepcopy(model)
    factorize_model(stage_a, config.model_copy(update={"train": "router"}), CALIBRATION)
    result = factorize_model(model, config, CALIBRATION)
    for name, p in model.named_parameters():
        if ".mlp." not in name:
            assert torch.equal(p, frozen[name]), name
    assert any(not torch.equal(a, b) for (n, a), (_, b) in zip(model.named_parameters(), stage_a.named_parameters())
               if "gate_up" in n)
    losses = result.end_to_end["losses"]
    assert losses[-1]["distill"] < losses[0]["distill"]
    teacher = teacher_targets(stage_a, CALIBRATION, 64, torch.device("cpu"))
    assert teacher.probs.shape == (4, 31, 64) and (teacher.probs.sum(-1) <= 1 + 1e-5).all()
    with torch.no_grad():  # on the training windows, closer to the dense model (full-vocabulary KL) than stage A
        def kl(m):
            return F.kl_div(F.log_softmax(m(CALIBRATION).logits, -1), F.log_softmax(dense_logits, -1),
                            log_target=True, reduction="batchmean").item()
        assert kl(model) < kl(stage_a)


def test_bucket_cross_entropy_is_the_full_cross_entropy_when_k_covers_the_vocabulary():
    from compress.factorize.finetune import bucket_cross_entropy

    teacher, student = torch.randn(3, 5, 11).softmax(-1), torch.randn(3, 5, 11).log_softmax(-1)
    probs, index = teacher.topk(11, -1)
    full = -(teacher * student).sum(-1).mean()
    torch.testing.assert_close(bucket_cross_entropy(student, probs, index), full)
    probs, index = teacher.topk(4, -1)  # 4 + "other": the tail's mass against the student's tail mass
    kept = student.gather(-1, index)
    tail = torch.log(1 - kept.exp().sum(-1))
    expected = -((probs * kept).sum(-1) + (1 - probs.sum(-1)) * tail).mean()
    torch.testing.assert_close(bucket_cross_entropy(student, probs, index), expected)


def _brute_nm(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    keep = torch.zeros_like(score, dtype=torch.bool)
    for row in range(score.shape[0]):
        for start in range(0, score.shape[1], m):
            best = sorted(range(start, start + m), key=lambda j: -score[row, j].item())[:n]
            keep[row, best] = True
    return keep


def test_expert_pruning_uses_each_experts_own_tokens():
    from compress.factorize.prune import prune_experts
    from compress.prune.config import PruneConfig
    from compress.factorize.moe import route

    model = _model("llama")
    factorize_model(model, FactorizeConfig(experts=4, top_k=2, split="random", router="par", steps=10), CALIBRATION)
    moe = model.model.layers[0].mlp
    seen = []
    handle = moe.register_forward_hook(lambda _m, args, _o: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        model(CALIBRATION)
    handle.remove()
    x = torch.cat(seen)
    gate_up, down = moe.gate_up.detach().clone(), moe.down.detach().clone()
    result = prune_experts(model, PruneConfig(method="wanda", pattern="2:4"), CALIBRATION)
    chosen = route(moe.router(x), 2)[1]
    with torch.no_grad():
        for e in range(4):
            mine = x[(chosen == e).any(-1)]
            assert mine.shape[0] > 0
            want = _brute_nm(gate_up[e].abs() * mine.pow(2).sum(0).sqrt(), 2, 4)
            assert torch.equal(moe.gate_up[e] != 0, want), e
            g, u = F.linear(mine, moe.gate_up[e]).chunk(2, -1)
            neurons = F.silu(g) * u
            assert torch.equal(moe.down[e] != 0, _brute_nm(down[e].abs() * neurons.pow(2).sum(0).sqrt(), 2, 4)), e
    assert result.steps[0].info["tokens_per_expert"] == [int((chosen == e).any(-1).sum()) for e in range(4)]
    assert result.overall_sparsity == pytest.approx(0.5)


@pytest.mark.parametrize("family", ["gemma", "gemma3"])
def test_factorized_checkpoint_round_trips_a_trained_model(family, tmp_path):
    import compress
    from compress.factorize.checkpoint import save_factorized

    model = _model(family)
    factorize_model(model, FactorizeConfig(experts=4, top_k=1, split="cluster", router="par", steps=10), CALIBRATION)
    save_factorized(model, None, tmp_path / "out", {"tool": "compress"})
    loaded = compress.load(tmp_path / "out")
    assert all(torch.equal(a.groups, b.groups) for a, b in zip(factorized_mlps(loaded).values(),
                                                               factorized_mlps(model).values()))
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, model(IDS).logits, atol=0, rtol=0)
