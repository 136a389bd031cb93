"""The position prior (compress.attention.calibration.prior) against definitions written out here: buckets of distances,
the fitted prior as a brute-force mean over (query, key) pairs, the installed layer's choice as a brute force
over label scores plus the prior; a file without a prior is refused with exit 2."""
import json

import torch
from typer.testing import CliRunner

from compress.attention.calibration.prior import BUCKETS, EXACT, SINK, PriorSums, distance_buckets
from compress.cli import app
from tests.conftest import save_tiny_model, tiny_llama_config
from tests.test_attention_sparse import brute_force

runner = CliRunner()


def bucket_of(i: int, j: int) -> int:
    if j == 0:
        return SINK
    delta = i - j
    if delta < EXACT:
        return delta
    power = 0
    while 2 ** (power + 1) <= delta:
        power += 1
    return min(EXACT + power - 4, BUCKETS - 2)  # EXACT = 16 = 2**4


def test_buckets_follow_the_definition():
    positions = torch.tensor([0, 1, 15, 16, 17, 31, 32, 100, 1000, 5000])
    table = distance_buckets(positions, 5001)
    for row, i in enumerate(positions.tolist()):
        for j in (0, 1, 2, i - 33, i - 32, i - 31, i - 17, i - 16, i - 15, i - 1, i):
            if 0 <= j <= i:
                assert table[row, j].item() == bucket_of(i, j), (i, j)
    last = 1 << 17  # every distance up to 2^17 from one query (powers of two are where a float log2 can slip)
    row = distance_buckets(torch.tensor([last]), last + 1)[0]
    expected = [SINK] + [bucket_of(last, j) for j in range(1, last + 1)]
    assert row.tolist() == expected
    huge = distance_buckets(torch.tensor([2 ** 62]), 2)
    assert huge[0, 1].item() == BUCKETS - 2


def test_fit_is_the_mean_over_pairs():
    """Two windows: the prior per KV head and bucket is the mean over every causal (query, key) pair of the
    group-averaged logit minus that query's mean over its keys; unreached buckets copy the closer one."""
    g = torch.Generator().manual_seed(0)
    heads, kv, n, d = 4, 2, 20, 8
    windows = [(torch.randn(1, heads, n, d, generator=g), torch.randn(1, kv, n, d, generator=g)) for _ in range(2)]
    sums = PriorSums()
    for q, k in windows:
        sums.update(q, k)
    total = torch.zeros(kv, BUCKETS, dtype=torch.float64)
    count = torch.zeros(BUCKETS, dtype=torch.float64)
    for q, k in windows:
        for h in range(kv):
            for i in range(n):
                logits = [sum(float(q[0, hh, i] @ k[0, h, j]) for hh in (2 * h, 2 * h + 1)) / 2 for j in range(i + 1)]
                mean = sum(logits) / len(logits)
                for j in range(i + 1):
                    total[h, bucket_of(i, j)] += logits[j] - mean
                    count[bucket_of(i, j)] += 1 / kv
    expected = total / count.clamp_min(1)
    reached = int(max(b for b in range(SINK) if count[b] > 0))
    expected[:, reached + 1:SINK] = expected[:, reached:reached + 1]
    torch.testing.assert_close(sums.fit().double(), expected, rtol=1e-5, atol=1e-6)


def test_fit_samples_queries_of_long_windows():
    """A window longer than QUERIES_PER_WINDOW (and a batch of two): the fit uses every (n // that)-th query,
    from the first, and every sequence of the batch."""
    from compress.attention.calibration.prior import QUERIES_PER_WINDOW

    g = torch.Generator().manual_seed(1)
    heads, kv, n, d = 4, 2, 600, 8
    q, k = torch.randn(2, heads, n, d, generator=g), torch.randn(2, kv, n, d, generator=g)
    sums = PriorSums()
    sums.update(q, k)
    queries = list(range(0, n, n // QUERIES_PER_WINDOW))
    buckets = torch.tensor([[bucket_of(i, j) if j <= i else 0 for j in range(n)] for i in queries])
    total = torch.zeros(kv, BUCKETS, dtype=torch.float64)
    count = torch.zeros(BUCKETS, dtype=torch.float64)
    for b in range(2):
        for h in range(kv):
            logits = (q[b, 2 * h:2 * h + 2, queries].double() @ k[b, h].double().T).mean(0)  # (queries, n)
            for row, i in enumerate(queries):
                centred = logits[row, :i + 1] - logits[row, :i + 1].mean()
                total[h].index_add_(0, buckets[row, :i + 1], centred)
                if h == 0:
                    count.index_add_(0, buckets[row, :i + 1], torch.ones(i + 1, dtype=torch.float64))
    expected = total / count.clamp_min(1)
    reached = int(max(b for b in range(SINK) if count[b] > 0))
    expected[:, reached + 1:SINK] = expected[:, reached:reached + 1]
    torch.testing.assert_close(sums.fit().double(), expected, rtol=1e-5, atol=1e-6)


def _file(model, path):
    from compress.attention.calibration.calibrate import channel_statistics, write_statistics

    windows = torch.randint(3, 320, (2, 40), generator=torch.Generator().manual_seed(0))
    write_statistics(path, channel_statistics(model, windows, "qk"), "qk", model.config)
    return path


def test_installed_prior_equals_brute_force(tmp_path):
    from transformers import LlamaForCausalLM

    from compress.attention.evaluation import runtime
    from compress.attention.calibration.channels import read_channel_file
    from compress.attention.config import DoubleSparsity
    from compress.calibrate.attention import capture_attention

    torch.manual_seed(3)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    path = _file(model, tmp_path / "ch.json")
    file = read_channel_file(path, model.config, 2)
    prior = file.prior[1]
    assert prior.shape == (2, BUCKETS) and prior.abs().sum() > 0
    settings = DoubleSparsity(channel_file=str(path), channels="2", tokens="6", dense_layers=1, position_prior=True,
                              labels="channels")
    attn = model.model.layers[1].self_attn
    seen = {}
    hooks = [attn.v_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("v", o)),
             attn.o_proj.register_forward_pre_hook(lambda m, i: seen.__setitem__("out", i[0]))]
    ids = torch.randint(0, 320, (1, 30))
    with torch.no_grad(), runtime.sparse_attention(model, settings, 30) as state:
        with capture_attention({"l1": attn}, lambda name, q, k: seen.update(q=q, k=k)):
            model(ids)
    for h in hooks:
        h.remove()
    assert state.summary()["position_prior"] is True
    v = seen["v"].view(1, 30, 2, 16).transpose(1, 2)
    heavy = file.heavy(1, 2, per_kv_head=True)
    expected, _ = brute_force(seen["q"], seen["k"], v, heavy, 4, 6, attn.scaling,
                              bias=lambda g, i, j: prior[g, bucket_of(i, j)].item())
    torch.testing.assert_close(seen["out"], expected.transpose(1, 2).reshape(1, 30, 64), rtol=1e-5, atol=1e-5)
    without, _ = brute_force(seen["q"], seen["k"], v, heavy, 4, 6, attn.scaling)
    assert (without - expected).abs().max() > 1e-4  # the prior changed some choice


def test_file_without_prior_exits_2(tmp_path, text_file):
    model_dir = save_tiny_model(tmp_path / "m")
    out = tmp_path / "ch.json"
    assert runner.invoke(app, ["attention", "calibrate", str(model_dir), "--out", str(out), "--text", str(text_file),
                               "--nsamples", 1, "--seqlen", 32, "--device", "cpu", "-q"]).exit_code == 0
    data = json.loads(out.read_text())
    assert set(data["compress"]["position_prior"]) == {"buckets", "exact", "layers"}
    base = ["eval", str(model_dir), "--text", str(text_file), "--context", 32, "--max-tokens", 64, "--device", "cpu",
            "-q", "--position-prior", "--dense-layers", 1, "--double-sparsity"]  # the tiny model has 2 layers
    del data["compress"]["position_prior"]
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(data))
    bad = tmp_path / "bad.json"
    data["compress"]["position_prior"] = {"buckets": 8, "exact": 4, "layers": {}}
    bad.write_text(json.dumps(data))
    for path, needle in ((bare, "no position prior"), (bad, "buckets")):
        result = runner.invoke(app, [str(a) for a in (*base, path)])
        assert result.exit_code == 2 and needle in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1
    assert runner.invoke(app, [str(a) for a in (*base, out)]).exit_code == 0
