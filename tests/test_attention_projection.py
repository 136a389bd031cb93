"""Projected labels (compress.attention.calibration.projection) against independent references: the fitted maps reach the
optimum a gradient-descent solver finds, a planted low-rank q·k structure is found where no channel subset sees
it, full rank scores the exact logits, the installed layer equals a brute force, the file round trip keeps the
JSON readable the reference's way, bad inputs exit 2 with one line."""
import hashlib
import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from compress.attention.evaluation import sparse
from compress.attention.calibration.projection import QKMoments, fit_layer
from compress.cli import app
from tests.conftest import save_tiny_model, tiny_llama_config
from tests.test_attention_channels import sglang_style_rows
from tests.test_attention_sparse import brute_force

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def _pairs_loss(group_query, key, a, b):
    """Mean over every (query, key) pair of the squared error of the rank-r form, keys centred: from samples."""
    s = group_query.double()
    k = key.double() - key.double().mean(0)
    exact = s @ k.T
    approx = (s @ a.double()) @ (k @ b.double()).T
    return ((exact - approx) ** 2).mean().item()


def _samples(n=400, d=8, group=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix_q, mix_k = torch.randn(d, d, generator=g), torch.randn(d, d, generator=g)
    query = torch.randn(1, group, n, d, generator=g) @ mix_q  # one KV head, `group` query heads
    key = torch.randn(1, 1, n, d, generator=g) @ mix_k + torch.randn(d, generator=g)
    return query, key


@pytest.mark.parametrize("rank", [1, 3])
def test_fit_is_the_optimal_rank_r_form(rank):
    """No (A, B) a gradient-descent solver finds from several starts beats the whitened SVD on the pairs' error."""
    query, key = _samples()
    moments = QKMoments()
    moments.update(query[:, :, :250], key[:, :, :250])
    moments.update(query[:, :, 250:], key[:, :, 250:])  # two windows accumulate as one
    a, b = (m[0, :, :rank] for m in fit_layer(moments))
    s, k = query[0].sum(0), key[0, 0]
    fitted = _pairs_loss(s, k, a, b)
    best = float("inf")
    for seed in range(3):
        torch.manual_seed(seed)
        x = torch.randn(8, rank, dtype=torch.float64, requires_grad=True)
        y = torch.randn(8, rank, dtype=torch.float64, requires_grad=True)
        solver = torch.optim.LBFGS([x, y], max_iter=500, line_search_fn="strong_wolfe")
        sd, kc = s.double(), k.double() - k.double().mean(0)

        def closure():
            solver.zero_grad()
            loss = ((sd @ kc.T - (sd @ x) @ (kc @ y).T) ** 2).mean()
            loss.backward()
            return loss
        for _ in range(5):
            solver.step(closure)
        best = min(best, _pairs_loss(s, k, x.detach(), y.detach()))
    assert fitted <= best * (1 + 1e-4)
    assert fitted >= best * (1 - 1e-2)  # the solver reaches it too: the optimum, not a lucky bound


def test_planted_low_rank_structure_is_found():
    """q·k lives in a rotated rank-2 subspace: rank-2 projected labels pick the true top-T keys, two channels don't."""
    g = torch.Generator().manual_seed(3)
    n, d, budget = 300, 16, 20
    basis_q = torch.linalg.qr(torch.randn(d, d, generator=g))[0][:, :2]
    basis_k = torch.linalg.qr(torch.randn(d, d, generator=g))[0][:, :2]
    query = (torch.randn(1, 2, n, 2, generator=g) * 3) @ basis_q.T + 0.05 * torch.randn(1, 2, n, d, generator=g)
    key = (torch.randn(1, 1, n, 2, generator=g) * 3) @ basis_k.T + 0.05 * torch.randn(1, 1, n, d, generator=g)
    moments = QKMoments()
    moments.update(query, key)
    a, b = (m[..., :2] for m in fit_layer(moments))
    kv_of_head = torch.zeros(2, dtype=torch.long)
    exact = sparse.label_scores(query, key, None, 16, kv_of_head)
    projected = sparse.projected_scores(query, key, a, b, 16, kv_of_head)
    stat = (query[0] * key[0]).abs().mean((0, 1))
    channels = sparse.label_scores(query, key, stat.argsort(descending=True)[:2].expand(2, 2), 16, kv_of_head)

    def recall(scores):
        top = lambda s: s.sum(1)[0].topk(budget, -1).indices  # noqa: E731 (per query, the group-summed top-T)
        truth, chosen = top(exact), top(scores)
        return sum(len(set(t.tolist()) & set(c.tolist())) for t, c in zip(truth, chosen)) / truth.numel()

    assert recall(projected) > 0.9
    assert recall(channels) < recall(projected) - 0.3


def test_full_rank_scores_are_the_exact_logits():
    query, key = _samples(d=8, group=2)
    moments = QKMoments()
    moments.update(query, key)
    a, b = fit_layer(moments)
    kv_of_head = torch.zeros(2, dtype=torch.long)
    exact = sparse.label_scores(query, key, None, 16, kv_of_head)
    full = sparse.projected_scores(query, key, a, b, 16, kv_of_head)
    # 16-bit labels: float16 rounding of k B only
    torch.testing.assert_close(full, exact, rtol=0, atol=2e-3 * exact.abs().max().item())


def _projected_file(model, path):
    from compress.attention.calibration.calibrate import channel_statistics, rank_channels
    from compress.attention.calibration.channels import write_channel_file
    from compress.model.roles import HeadLayout

    windows = torch.randint(3, 320, (2, 24), generator=torch.Generator().manual_seed(0))
    stats = channel_statistics(model, windows, "qk", projection=True)
    rows, kv_rows = rank_channels(stats, "qk", HeadLayout.of(model.config))
    maps = [fit_layer(m) for m in stats.moments]
    return write_channel_file(path, "qk", model.config, rows, kv_rows, stats.windows, stats.tokens, maps)


@pytest.mark.parametrize("kv_heads", [2, 4])
def test_installed_projection_equals_brute_force(tmp_path, kv_heads):
    """A sparse layer with projected labels: the kept sets are the brute-force top-T of (q A)·(k B) labels
    (computed here from the file's tensors), the output exact softmax attention over those sets; full rank
    and a budget of the whole context equal dense."""
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    from compress.attention.evaluation import runtime
    from compress.attention.config import DoubleSparsity
    from compress.calibrate.attention import capture_attention

    torch.manual_seed(2)
    model = LlamaForCausalLM(tiny_llama_config(num_key_value_heads=kv_heads)).eval()
    path = _projected_file(model, tmp_path / "ch.json")
    settings = DoubleSparsity(channel_file=str(path), channels="3", tokens="5", dense_layers=1, labels="projection",
                              position_prior=False, sink=1, recent=1)
    attn = model.model.layers[1].self_attn
    seen = {}
    hook = attn.o_proj.register_forward_pre_hook(lambda m, i: seen.__setitem__("out", i[0]))
    hook_v = attn.v_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("v", o))
    ids = torch.randint(0, 320, (1, 14))
    with torch.no_grad(), runtime.sparse_attention(model, settings, 14) as state:
        with capture_attention({"l1": attn}, lambda name, q, k: seen.update(q=q, k=k)):
            model(ids)
    hook.remove(), hook_v.remove()
    assert state.summary()["labels"] == "projection" and state.summary()["channels"] == 3
    maps = load_file(str(tmp_path / "ch.projection.safetensors"))
    a, b = maps["layers.1.query"][..., :3], maps["layers.1.key"][..., :3]
    group = 4 // kv_heads
    q, k = seen["q"], seen["k"]
    pq = torch.stack([q[0, h] @ a[h // group] for h in range(4)])[None]
    pk = torch.stack([k[0, g] @ b[g] for g in range(kv_heads)])[None]
    v = seen["v"].view(1, 14, kv_heads, 16).transpose(1, 2)
    # only the kept sets are used (the brute force's own output is over the projected vectors)
    _, kept = brute_force(pq, pk, pk, torch.arange(3).expand(4, 3), 4, 5, attn.scaling, sink=1, recent=1)
    expected = torch.zeros_like(q)
    for (_, g, i), chosen in kept.items():
        idx = torch.tensor(sorted(chosen))
        for h in range(g * group, (g + 1) * group):
            expected[0, h, i] = torch.softmax((k[0, g, idx] @ q[0, h, i]) * attn.scaling, 0) @ v[0, g, idx]
    torch.testing.assert_close(seen["out"], expected.transpose(1, 2).reshape(1, 14, 64), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        dense = model(ids).logits
        whole = settings.model_copy(update={"channels": "16", "tokens": "14", "sink": 0, "recent": 0})
        with runtime.sparse_attention(model, whole, 14):
            torch.testing.assert_close(model(ids).logits, dense, rtol=1e-5, atol=1e-5)


def test_cli_round_trip_and_bad_inputs(tmp_path, text_file):
    model_dir = save_tiny_model(tmp_path / "m")
    other_dir = save_tiny_model(tmp_path / "other", num_key_value_heads=4)
    calibrate = ["attention", "calibrate", "--text", text_file, "--nsamples", 2, "--seqlen", 32, "--device", "cpu",
                 "-q", "--projection"]
    out = tmp_path / "ch.json"
    assert invoke(*calibrate, model_dir, "--out", out).exit_code == 0
    data = json.loads(out.read_text())
    digest = hashlib.sha256((tmp_path / "ch.projection.safetensors").read_bytes()).hexdigest()
    assert data["compress"]["projection"] == {"file": "ch.projection.safetensors", "method": "whitened-svd",
                                              "sha256": digest}
    assert sglang_style_rows(out, 1, "qk", 4).shape == (4, 4)  # the reference's reading is unchanged
    base = ["eval", "--text", text_file, "--context", 32, "--max-tokens", 64, "--device", "cpu", "--json"]
    result = invoke(*base, model_dir, "--double-sparsity", out, "--labels", "projection", "--channels", 2,
                    "--tokens", 8, "--dense-layers", 1)
    assert result.exit_code == 0, result.output
    dense, projected = json.loads(result.stdout)["results"]
    assert projected["labels"] == "projection" and projected["channels"] == 2 and 0 < projected["kept_share"] < 1

    plain = tmp_path / "plain.json"
    assert invoke(*calibrate[:-1], "--no-projection", model_dir, "--out", plain).exit_code == 0
    other = tmp_path / "other.json"
    assert invoke(*calibrate, other_dir, "--out", other).exit_code == 0
    moved = tmp_path / "moved.json"
    shutil.copy(out, moved)  # names ch.projection.safetensors, which is beside it: fine
    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps({**data, "compress": {**data["compress"], "projection": {
        "file": "other.projection.safetensors", "method": "whitened-svd"}}}))
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({**data, "compress": {**data["compress"], "projection": {"file": "gone.safetensors"}}}))
    escape = tmp_path / "escape.json"
    escape.write_text(json.dumps({**data, "compress": {**data["compress"], "projection": {"file": "../x.safetensors"}}}))
    foreign = tmp_path / "f.projection.safetensors"
    foreign.write_text("mine")
    evaluate = [*base, model_dir, "--double-sparsity"]
    cases = [
        ([*evaluate, plain, "--labels", "projection"], "--projection"),
        ([*evaluate, swapped, "--labels", "projection"], "another model"),
        ([*evaluate, missing, "--labels", "projection"], "missing"),
        ([*evaluate, escape, "--labels", "projection"], "beside"),
        ([*evaluate, out, "--labels", "pca"], "--labels"),
        ([*base, model_dir, "--labels", "projection"], "goes with --double-sparsity"),
        ([*calibrate, model_dir, "--out", tmp_path / "f.json"], "already exists"),
        ([*calibrate, model_dir, "--out", tmp_path / "f.json", "--force"], "not a projection file"),
    ]
    for args, needle in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert needle in result.output and len(result.output.strip().splitlines()) == 1, (args, result.output)
    assert foreign.read_text() == "mine" and not (tmp_path / "f.json").exists()
    assert invoke(*base, model_dir, "--double-sparsity", moved, "--labels", "projection",
                  "--dense-layers", 1).exit_code == 0


def test_recipe_stage_writes_the_projection(tiny_model_dir, text_file, tmp_path):
    """The attention stage with projection: true writes the same projected labels as the command."""
    from safetensors.torch import load_file

    staged = tmp_path / "staged.json"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"calibrate: {{nsamples: 2, seqlen: 32, text: {text_file}}}\n"
                      f"stages:\n  - attention: {{channel_file: {staged}, projection: true}}\n")
    assert invoke("run", recipe, tiny_model_dir, "--quiet", "--set", "device=cpu").exit_code == 0
    direct = tmp_path / "direct.json"
    assert invoke("attention", "calibrate", tiny_model_dir, "--out", direct, "--text", text_file, "--nsamples", 2,
                  "--seqlen", 32, "--device", "cpu", "-q", "--projection").exit_code == 0
    a, b = (load_file(str(tmp_path / f"{name}.projection.safetensors")) for name in ("staged", "direct"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    assert json.loads(staged.read_text())["compress"]["projection"]["file"] == "staged.projection.safetensors"


def test_altered_projection_and_prior_are_refused(tmp_path):
    """A projection file replaced after its channel file was written, non-finite maps or prior values, and
    tensors named outside layers.N.query/key are refused with one line (BadInput), not used."""
    import json

    from safetensors.torch import load_file, save_file
    from transformers import LlamaForCausalLM

    from compress.attention.calibration.channels import read_channel_file
    from compress.attention.calibration.projection import projection_path
    from compress.errors import BadInput

    torch.manual_seed(3)
    model = LlamaForCausalLM(tiny_llama_config(num_key_value_heads=2)).eval()
    path = _projected_file(model, tmp_path / "ch.json")
    layers = model.config.num_hidden_layers
    read_channel_file(path, model.config, layers).projection(3)  # as written: read
    beside = projection_path(path)
    tensors = load_file(str(beside))
    metadata = {"compress": "projection"}

    def refused(expected: str) -> None:
        with pytest.raises(BadInput, match=expected):
            read_channel_file(path, model.config, layers).projection(3)

    save_file({name: t * 2 for name, t in tensors.items()}, str(beside), metadata=metadata)
    refused("was replaced")
    data = json.loads(path.read_text())
    del data["compress"]["projection"]["sha256"]  # a file written before digests: the contents are checked
    path.write_text(json.dumps(data))
    save_file({**tensors, "layers.0.query": torch.full_like(tensors["layers.0.query"], float("nan"))}, str(beside),
              metadata=metadata)
    refused("not finite")
    save_file({**tensors, "extra": tensors["layers.0.query"].clone()}, str(beside), metadata=metadata)
    refused("other than layers")
    data["compress"]["position_prior"] = {"buckets": 64, "exact": 16, "layers": {
        key: [[float("nan")] * 64] * 2 for key in data if key.startswith("model.layers.")}}
    path.write_text(json.dumps(data))
    with pytest.raises(BadInput, match="not finite"):
        read_channel_file(path, model.config, layers)


def test_projected_labels_past_their_calibration_length_warn_once(tmp_path):
    """The file records windows of 24 tokens: a context of 30 warns once (not again for the same file and
    context), a context within 24 does not; channel labels never do."""
    import warnings

    from transformers import LlamaForCausalLM

    from compress.attention.config import DoubleSparsity
    from compress.attention.evaluation.runtime import build

    torch.manual_seed(2)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    path = str(_projected_file(model, tmp_path / "ch.json"))
    projected = DoubleSparsity(channel_file=path, channels="2", tokens="4", dense_layers=1, labels="projection",
                               position_prior=False)
    with pytest.warns(UserWarning, match="windows of 24 tokens serve a context of 30"):
        build(model, projected, 30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build(model, projected, 30)
        build(model, projected, 24)
        build(model, projected.model_copy(update={"labels": "channels"}), 40)
