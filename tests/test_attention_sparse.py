"""Double Sparsity attention against independent references: dense attention when nothing is dropped,
brute-force top-T / top-p selection and attention over the kept set, GQA and MHA, bad inputs exit 2."""
import json

import pytest
import torch
from typer.testing import CliRunner

from compress.attention.evaluation import sparse
from compress.cli import app
from tests.conftest import save_tiny_model, tiny_llama_config

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def brute_force(query, key, value, heavy, bits, budget, scaling, sink=0, recent=0, top_p=None, bias=None):
    """One query at a time, written from the definitions: label scores over each head's heavy channels
    (plus bias(kv head, query, key) when given), summed over the query heads of a KV head; keep sink/recent keys, then the best-scoring ones up to T
    (or, for top-p, the fewest whose mean approximate softmax mass reaches p); softmax over the kept keys."""
    b, h, n, d = query.shape
    kvh = key.shape[1]
    group = h // kvh
    out = torch.zeros_like(query)
    kept = {}
    for bi in range(b):
        for g in range(kvh):
            for i in range(n):
                past = list(range(i + 1))
                scores = {j: 0.0 for j in past}
                probs = {j: 0.0 for j in past}
                for hh in range(g * group, (g + 1) * group):
                    ch = heavy[hh].tolist()
                    labels = sparse.quantize_labels(key[bi, g, : i + 1][:, ch], bits)
                    s = (labels @ query[bi, hh, i, ch]).tolist()
                    if bias is not None:
                        s = [s[j] + bias(g, i, j) for j in past]
                    p = torch.softmax(torch.tensor(s) * scaling, 0).tolist()
                    for j in past:
                        scores[j] += s[j]
                        probs[j] += p[j] / group
                forced = {j for j in past if j < sink or j > i - recent}
                if top_p is not None:
                    order = sorted(past, key=lambda j: -probs[j])
                    chosen, mass = set(), 0.0
                    for j in order:
                        if mass >= top_p:
                            break
                        chosen.add(j)
                        mass += probs[j]
                    chosen |= forced
                elif len(past) <= budget:
                    chosen = set(past)
                else:
                    rest = sorted(set(past) - forced, key=lambda j: -scores[j])
                    chosen = forced | set(rest[: budget - len(forced)])
                kept[bi, g, i] = chosen
                idx = torch.tensor(sorted(chosen))
                for hh in range(g * group, (g + 1) * group):
                    w = torch.softmax((key[bi, g, idx] @ query[bi, hh, i]) * scaling, 0)
                    out[bi, hh, i] = w @ value[bi, g, idx]
    return out, kept


@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (4, 4)])
@pytest.mark.parametrize("bits, sink, recent", [(4, 0, 0), (16, 1, 2), (8, 0, 3)])
def test_fixed_budget_matches_brute_force(heads, kv_heads, bits, sink, recent):
    torch.manual_seed(heads + kv_heads + bits)
    b, n, d, r, budget = 2, 13, 8, 3, 6
    q, k, v = torch.randn(b, heads, n, d), torch.randn(b, kv_heads, n, d), torch.randn(b, kv_heads, n, d)
    heavy = torch.stack([torch.randperm(d)[:r] for _ in range(heads)])
    kv_of_head = torch.arange(heads) // (heads // kv_heads)
    scores = sparse.label_scores(q, k, heavy, bits, kv_of_head)
    allowed = sparse.allowed_keys(n, n, None, "cpu")
    keep = sparse.select_fixed(scores, allowed, budget, kv_heads, sink, recent)
    out = sparse.masked_attention(q, k, v, keep, 0.3, kv_of_head)
    expected, kept = brute_force(q, k, v, heavy, bits, budget, 0.3, sink, recent)
    for (bi, g, i), chosen in kept.items():
        assert set(torch.nonzero(keep[bi, g, i]).flatten().tolist()) == chosen
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heads, kv_heads", [(4, 2), (2, 2)])
def test_top_p_matches_brute_force(heads, kv_heads):
    torch.manual_seed(5)
    b, n, d = 1, 11, 8
    q, k, v = torch.randn(b, heads, n, d) * 2, torch.randn(b, kv_heads, n, d), torch.randn(b, kv_heads, n, d)
    heavy = torch.stack([torch.randperm(d)[:4] for _ in range(heads)])
    kv_of_head = torch.arange(heads) // (heads // kv_heads)
    scores = sparse.label_scores(q, k, heavy, 16, kv_of_head)
    keep = sparse.select_top_p(scores, sparse.allowed_keys(n, n, None, "cpu"), 0.8, kv_heads, 0.5, sink=1)
    expected, kept = brute_force(q, k, v, heavy, 16, None, 0.5, sink=1, top_p=0.8)
    for (bi, g, i), chosen in kept.items():
        assert set(torch.nonzero(keep[bi, g, i]).flatten().tolist()) == chosen
    assert keep.sum() < sum(i + 1 for i in range(n)) * kv_heads  # something was dropped
    torch.testing.assert_close(sparse.masked_attention(q, k, v, keep, 0.5, kv_of_head), expected)


def _channel_file(model, path, mode="qk"):
    from compress.attention.calibration.calibrate import channel_statistics, rank_channels
    from compress.attention.calibration.channels import write_channel_file
    from compress.model.roles import HeadLayout

    windows = torch.randint(3, 320, (2, 24), generator=torch.Generator().manual_seed(0))
    stats = channel_statistics(model, windows, mode)
    rows, kv_rows = rank_channels(stats, mode, HeadLayout.of(model.config))
    return write_channel_file(path, mode, model.config, rows, kv_rows, stats.windows, stats.tokens)


@pytest.mark.parametrize("kv_heads", [2, 4])
@pytest.mark.parametrize("bits", [4, 16])
def test_all_channels_and_whole_context_equal_dense(tmp_path, kv_heads, bits):
    from transformers import LlamaForCausalLM

    from compress.attention.config import DoubleSparsity
    from compress.attention.evaluation.runtime import sparse_attention

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config(num_key_value_heads=kv_heads)).eval()
    path = _channel_file(model, tmp_path / "ch.json")
    ids = torch.randint(0, 320, (2, 40))
    settings = DoubleSparsity(channel_file=str(path), channels="16", tokens="1", label_bits=bits, dense_layers=0,
                              labels="channels", position_prior=False)
    with torch.no_grad():
        dense = model(ids).logits
        with sparse_attention(model, settings.model_copy(update={"tokens": "40"}), 40) as state:
            same = model(ids).logits
        with sparse_attention(model, settings.model_copy(update={"tokens": "1/4"}), 40):
            cut = model(ids).logits
    torch.testing.assert_close(same, dense, rtol=1e-5, atol=1e-5)
    assert state.summary()["kept_share"] == 1.0
    assert (cut - dense).abs().max() > 1e-3  # a budget below the context does change the output
    assert model.config._attn_implementation == "sdpa"  # restored


@pytest.mark.parametrize("kv_heads", [2, 4])
def test_installed_layer_equals_brute_force(tmp_path, kv_heads, monkeypatch):
    """End to end: a sparse layer's attention output (o_proj's input) equals the brute force over the
    q/k seen by the registry and v from v_proj; chunks of queries smaller than the window; layer 0 dense."""
    from transformers import LlamaForCausalLM

    from compress.attention.evaluation import runtime
    from compress.attention.calibration.channels import read_channel_file
    from compress.attention.config import DoubleSparsity
    from compress.calibrate.attention import capture_attention

    monkeypatch.setattr(runtime, "QUERY_CHUNK", 7)
    torch.manual_seed(1)
    model = LlamaForCausalLM(tiny_llama_config(num_key_value_heads=kv_heads)).eval()
    path = _channel_file(model, tmp_path / "ch.json")
    settings = DoubleSparsity(channel_file=str(path), channels="1/4", tokens="5", label_bits=4, dense_layers=1,
                              sink=1, recent=1, labels="channels", position_prior=False)
    attn = model.model.layers[1].self_attn
    seen = {}
    hooks = [attn.v_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("v", o)),
             attn.o_proj.register_forward_pre_hook(lambda m, i: seen.__setitem__("out", i[0]))]
    ids = torch.randint(0, 320, (1, 18))
    with torch.no_grad(), runtime.sparse_attention(model, settings, 18):
        with capture_attention({"l1": attn}, lambda name, q, k: seen.update(q=q, k=k)):
            model(ids)
    for h in hooks:
        h.remove()
    file = read_channel_file(path, model.config, 2)
    heavy = file.heavy(1, 4, per_kv_head=kv_heads < 4)
    v = seen["v"].view(1, 18, kv_heads, 16).transpose(1, 2)
    expected, _ = brute_force(seen["q"], seen["k"], v, heavy, 4, 5, attn.scaling, sink=1, recent=1)
    torch.testing.assert_close(seen["out"], expected.transpose(1, 2).reshape(1, 18, 64), rtol=1e-5, atol=1e-5)


def test_bad_inputs_exit_2(tmp_path):
    model_dir = save_tiny_model(tmp_path / "m")
    other_dir = save_tiny_model(tmp_path / "other", num_hidden_layers=3)
    text = tmp_path / "t.txt"
    text.write_text("It is a truth universally acknowledged. " * 200)
    channels = tmp_path / "ch.json"
    assert invoke("attention", "calibrate", model_dir, "--out", channels, "--text", text, "--nsamples", 1,
                  "--seqlen", 32, "--device", "cpu", "-q").exit_code == 0
    base = ["eval", "--text", text, "--context", 32, "--max-tokens", 64, "--device", "cpu", "-q"]
    cases = [
        ([model_dir, "--double-sparsity", channels, "--channels", 32], "channels"),
        ([model_dir, "--double-sparsity", channels, "--tokens", 0], "--tokens"),
        ([model_dir, "--double-sparsity", channels, "--tokens", "-1/16"], "--tokens"),
        ([model_dir, "--double-sparsity", channels, "--tokens", "top-p:0"], "--tokens"),
        ([model_dir, "--double-sparsity", channels, "--tokens", 4, "--sink", 3, "--recent", 3], "budget"),
        ([model_dir, "--double-sparsity", channels, "--label-bits", 5], "--label-bits"),
        ([model_dir, "--double-sparsity", tmp_path / "none.json"], "no such channel file"),
        ([other_dir, "--double-sparsity", channels], "another model"),
        ([model_dir, "--channels", 2], "goes with --double-sparsity"),
    ]
    for extra, needle in cases:
        result = invoke(*base, *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert needle in result.output and len(result.output.strip().splitlines()) == 1, (extra, result.output)
    # a plain reference/SGLang file (no extra key) of another model's width is refused by shape
    data = json.loads(channels.read_text())
    del data["compress"]
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({k: [row[:8] for row in v] for k, v in data.items()}))
    result = invoke(*base, model_dir, "--double-sparsity", plain)
    assert result.exit_code == 2 and "another model" in result.output


@pytest.mark.parametrize("bits", [4, 8])
def test_label_quantisation_levels_and_error(bits):
    labels = torch.randn(50, 6)
    q = sparse.quantize_labels(labels, bits)
    low, high = labels.min(-1, keepdim=True).values, labels.max(-1, keepdim=True).values
    step = (high - low) / (2 ** bits - 1)
    assert ((q - labels).abs() <= step / 2 + 1e-6).all()
    assert all(len(set(row.tolist())) <= 2 ** bits for row in ((q - low) / step).round())
    torch.testing.assert_close(q.min(-1).values, labels.min(-1).values)


def test_eval_double_sparsity_reports_dense_and_sparse(tmp_path):
    model_dir = save_tiny_model(tmp_path / "m")
    text = tmp_path / "t.txt"
    text.write_text("It is a truth universally acknowledged, that a single man in possession. " * 120)
    channels = tmp_path / "ch.json"
    assert invoke("attention", "calibrate", model_dir, "--out", channels, "--text", text, "--nsamples", 2,
                  "--seqlen", 32, "--device", "cpu", "-q").exit_code == 0
    base = ["eval", model_dir, "--text", text, "--context", 64, "--max-tokens", 256, "--device", "cpu", "--json"]
    plain = json.loads(invoke(*base).stdout)["results"][0]
    result = invoke(*base, "--double-sparsity", channels, "--channels", "1/4", "--tokens", "1/8", "--dense-layers", 1)
    assert result.exit_code == 0, result.output
    dense, sparse = json.loads(result.stdout)["results"]
    assert dense["perplexity"] == pytest.approx(plain["perplexity"], rel=1e-6)
    assert sparse["budget"] == 8 and sparse["channels"] == 4  # 1/8 of the 64-token window; 1/4 of head_dim 16
    assert 0 < sparse["kept_share"] < 1 and sparse["perplexity"] != dense["perplexity"]
    adaptive = json.loads(invoke(*base, "--double-sparsity", channels, "--tokens", "top-p:0.5",
                               "--dense-layers", 1).stdout)["results"][1]
    assert adaptive["top_p"] == 0.5 and 0 < adaptive["kept_share"] < 1


def test_spread_order_visits_every_depth_and_spreads_any_prefix():
    from compress.attention.evaluation.measure import spread_order

    for n in (1, 2, 5, 16, 20):
        order = spread_order(n)
        assert sorted(order) == list(range(n))
    assert sorted(i * 5 // 20 for i in spread_order(20)[:5]) == [0, 1, 2, 3, 4]  # one depth in each fifth
    assert sorted(i * 4 // 16 for i in spread_order(16)[:4]) == [0, 1, 2, 3]


def test_greedy_continuations_equal_a_loop_without_cache(tmp_path):
    """The dense tokens of `continuations` (one prefill keeping the last logits, then cached steps) equal greedy
    decoding written out with a full forward per token; at T = the whole context sparse decoding is dense."""
    from transformers import LlamaForCausalLM

    from compress.attention.config import DoubleSparsity
    from compress.attention.evaluation.measure import continuations, greedy_agreement

    torch.manual_seed(4)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    prompt = torch.randint(0, 320, (20,))
    with torch.no_grad():
        dense, sparse_tokens, _ = continuations(model, prompt, 6, None)
        ids = prompt.clone()
        for _ in range(6):
            ids = torch.cat([ids, model(ids[None]).logits[0, -1].argmax().view(1)])
    assert sparse_tokens is None and torch.equal(dense, ids[20:])
    settings = DoubleSparsity(channel_file=str(_channel_file(model, tmp_path / "ch.json")), tokens="26", dense_layers=0,
                              labels="channels", position_prior=False)
    with torch.no_grad():
        assert greedy_agreement(model, prompt, 6, settings) == {"agreement": 1.0, "common_prefix": 6, "new_tokens": 6,
                                                                "kept_share": 1.0}
