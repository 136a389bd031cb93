"""Wanda and RIA masks of a real pruning run against masks recomputed from captured inputs.

The test walks the decoder layers itself: for layer i it runs the calibration batch through a fresh copy
of the model that holds the already pruned layers 0..i-1, captures the input of every Linear of layer i
with forward pre-hooks, scores the weights by the papers' formulas and takes the masks. Scores here are
float64; a mask may differ from the engine's (float32) only where two scores tie to 1e-6.
"""
import pytest
import torch
from torch import nn

from compress.prune.apply import PruneConfig, prune_model
from compress.pattern import parse_pattern

IDS = torch.randint(0, 320, (8, 32), generator=torch.Generator().manual_seed(3))


def prune_config(method, spec=None, sparsity=None, **options):
    """One calibration batch, so the engine accumulates ‖X‖ over the same tokens as the test's own pass."""
    return PruneConfig(method=method, pattern=spec, sparsity=sparsity, calib_batch=IDS.shape[0], **options)


def load(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def wanda_score(w, x):
    """|W_ij| · ‖X_j‖₂ (Sun et al., 2023)."""
    return w.abs() * x.pow(2).sum(0).sqrt()


def ria_score(w, x, alpha):
    """(|W_ij| / Σ_k |W_ik| + |W_ij| / Σ_k |W_kj|) · ‖X_j‖₂^α (Zhang et al., 2024)."""
    a = w.abs()
    return (a / a.sum(1, keepdim=True) + a / a.sum(0, keepdim=True)) * x.pow(2).sum(0).sqrt().pow(alpha)


def top_mask(score, keep):
    """True for the `keep` largest entries of each row of `score`."""
    mask = torch.zeros_like(score, dtype=torch.bool)
    return mask.scatter_(1, score.sort(dim=1, descending=True).indices[:, :keep], True)


def reference_mask(score, n=None, m=None, sparsity=None):
    rows, cols = score.shape
    if m is None:
        return top_mask(score, cols - round(sparsity * cols))
    return top_mask(score.reshape(-1, m), n).reshape(rows, cols)


def assert_same_up_to_ties(got, expected, score, group, name=""):
    """Rows (or N:M groups) of `group` entries may differ only where the differing scores tie to 1e-6."""
    g, e, s = (t.reshape(-1, group) for t in (got, expected, score.double()))
    for row in (g != e).any(1).nonzero().flatten().tolist():
        differing = s[row][g[row] != e[row]]
        assert differing.max() - differing.min() <= 1e-6 * differing.max(), \
            f"{name}: {int((g != e).any(1).sum())} groups differ; group {row} at scores {differing.tolist()}"
    return int((g != e).any(1).sum())


def linear_inputs(model, layer):
    """{name: (tokens, features) float64 input} of every Linear in `layer`, from one forward pass."""
    seen, hooks = {}, []
    for name, module in layer.named_modules():
        if isinstance(module, nn.Linear):
            hook = lambda _m, args, name=name: seen.__setitem__(name, args[0].reshape(-1, args[0].shape[-1]))
            hooks.append(module.register_forward_pre_hook(hook))
    with torch.no_grad():
        model(input_ids=IDS, use_cache=False)
    for hook in hooks:
        hook.remove()
    return {name: x.double() for name, x in seen.items()}


@pytest.mark.parametrize("method,spec,sparsity,alpha", [
    ("wanda", "2:4", None, None), ("wanda", None, 0.5, None), ("ria", "2:4", None, 0.3), ("ria", None, 0.5, 0.3),
])
def test_masks_of_a_real_run_match_the_papers_scores(tiny_model_dir, method, spec, sparsity, alpha):
    options = {"ria_alpha": alpha} if alpha is not None else {}
    pruned = load(tiny_model_dir)
    prune_model(pruned, prune_config(method, spec, sparsity, **options), IDS)
    pattern = parse_pattern(spec, sparsity)
    reference = load(tiny_model_dir)
    compared = 0
    for layer, done in zip(reference.model.layers, pruned.model.layers):
        inputs = linear_inputs(reference, layer)
        assert len(inputs) == 7
        for name, x in inputs.items():
            w = layer.get_submodule(name).weight.double()
            score = wanda_score(w, x) if method == "wanda" else ria_score(w, x, alpha)
            expected = reference_mask(score, pattern.n, pattern.m, pattern.sparsity)
            got = done.get_submodule(name).weight != 0
            assert_same_up_to_ties(got, expected, score, pattern.m or w.shape[1], name)
            compared += 1
        layer.load_state_dict(done.state_dict())  # the next layer sees the pruned one, as in the run
    assert compared == 14
