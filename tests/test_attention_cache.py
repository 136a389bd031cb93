"""Stock `model.generate` with a DoubleSparseCache (compress.attention.decoding.cache), on the CPU (the PyTorch
decode step): at a budget covering the context it is dense generation token for token; at a sparse budget its
logits are the evaluation mode's (compress.attention.evaluation: scores from labels over the keys, top T, exact
attention over those), recomputed independently through transformers' own cache; rows of a left-padded batch
decode as each row alone; sampling runs and follows the seed."""
import pytest
import torch

from compress.attention.decoding.cache import NAME, DoubleSparseCache, generate_tokens, uninstall
from compress.attention.decoding.generate_check import cache_logits, compare_cache_generation, random_channel_file
from tests.test_attention_generate import check, settings, tiny_model


def test_full_budget_generates_as_dense(tmp_path):
    """T ≥ every step's context: the model's own attention runs, over keys and values held in buffers written
    in place (equal to transformers' own cache); no step needed labels, so none were built."""
    from transformers import DynamicCache

    from compress.attention.decoding.cache_layers import BufferedLayer, LabelledLayer

    model = tiny_model()
    path = random_channel_file(model, tmp_path / "c.json")
    prompt = torch.randint(0, 320, (2, 30), generator=torch.Generator().manual_seed(1))
    dense, dense_logits = generate_tokens(model, prompt, 10)
    cache = DoubleSparseCache(model, settings(path, 4, tokens="1/1"), dense_rule=None)
    tokens, logits = generate_tokens(model, prompt, 10, cache)
    assert torch.equal(tokens, dense) and torch.equal(logits, dense_logits)
    assert cache.steps == 0 and cache.get_seq_length() == 39
    assert type(cache.layers[0]) is BufferedLayer and type(cache.layers[1]) is LabelledLayer  # dense_layers=1
    assert cache.layers[1].labels is None and cache.layers[1]._buffers[0].shape[2] == 256  # room for more tokens
    from compress.attention.evaluation.measure import _cache_argument

    own = DynamicCache()
    with torch.no_grad():
        model(input_ids=torch.cat([prompt, tokens[:, :-1]], 1), use_cache=True, **{_cache_argument(model): own})
    for ours, theirs in zip(cache.layers, own.layers):
        torch.testing.assert_close(ours.keys, theirs.keys, rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(ours.values, theirs.values, rtol=2e-3, atol=2e-3)


def test_labels_are_built_when_first_needed_then_appended(tmp_path):
    """The first sparse step labels every cached key; later steps append theirs: at the end the label cache
    equals labels built over the whole key cache. Buffers grown past their first size (300 tokens, then 1, then
    399) keep every token; crop and batch repetition act on them."""
    from compress.attention.decode_kernels.decode_torch import label_cache
    from compress.attention.decoding.cache_layers import BufferedLayer

    model = tiny_model()
    path = random_channel_file(model, tmp_path / "c.json", projection=True)
    prompt = torch.randint(0, 320, (2, 250), generator=torch.Generator().manual_seed(1))
    for extra in ({}, {"labels": "projection"}):
        cache = DoubleSparseCache(model, settings(path, 4, tokens="8").model_copy(update=extra), dense_rule=None)
        generate_tokens(model, prompt, 12, cache)
        layer = cache.layers[2]
        assert cache.steps == 2 * 11 and layer.keys.shape[2] == 261
        source = layer.keys if layer.key_map is None else layer.keys.float() @ layer.key_map[None]
        assert torch.equal(layer.labels, label_cache(source, cache.plan.heavy[2], 4))
    layer = BufferedLayer()
    full = torch.randn(1, 3, 700, 4)
    capacities = []
    for start, end in ((0, 300), (300, 301), (301, 700)):
        keys, values = layer.update(full[:, :, start:end], -full[:, :, start:end])
        capacities.append(layer._buffers[0].shape[2])
    assert torch.equal(keys, full) and torch.equal(values, -full) and capacities == [512, 512, 1024]
    layer.crop(-5)
    layer.batch_repeat_interleave(2)
    assert torch.equal(layer.keys, full[:, :, :695].repeat_interleave(2, 0)) and layer.get_seq_length() == 695


def test_the_dense_rule_keeps_short_steps_dense(tmp_path):
    """Under a rule whose crossover for 2 rows of 3 KV heads is 40 tokens, steps over fewer cached tokens run
    the model's own attention (dense generation's logits exactly), the later ones sparse."""
    from compress.attention.decoding.dense_rule import DenseRule

    model = tiny_model()
    path = random_channel_file(model, tmp_path / "c.json")
    prompt = torch.randint(0, 320, (2, 30), generator=torch.Generator().manual_seed(1))
    dense, dense_logits = generate_tokens(model, prompt, 12)
    rule = DenseRule("test", {6: 40})
    cache = DoubleSparseCache(model, settings(path, 4, tokens="4"), dense_rule=rule)
    tokens, logits = generate_tokens(model, prompt, 12, cache)
    assert cache.steps == 2 * 2  # steps over 40 and 41 tokens, 2 sparse layers
    assert torch.equal(logits[:, :10], dense_logits[:, :10])  # the prefill and the steps over 31 .. 39 tokens
    assert (logits[:, 10:] - dense_logits[:, 10:]).abs().max() > 0.05 * dense_logits.abs().max()
    assert cache.layers[1].labels.shape[-1] == 41
    never = DoubleSparseCache(model, settings(path, 4, tokens="4"), dense_rule=DenseRule("test", {6: None}))
    assert torch.equal(generate_tokens(model, prompt, 12, never)[1], dense_logits) and never.steps == 0
    measured = DoubleSparseCache(model, settings(path, 4, tokens="4"))  # the CPU's: the fallback's eager rule
    assert measured.plan.rule.name == "fallback (eager)"


@pytest.mark.parametrize("bits,selection", [(16, "topk"), (4, "threshold")])
@pytest.mark.parametrize("extra", [{}, {"position_prior": True}, {"labels": "projection"}])
def test_sparse_budget_is_the_evaluation_mode(bits, selection, extra, tmp_path):
    model = tiny_model()
    path = random_channel_file(model, tmp_path / "c.json", prior=True, projection=True)
    prompt = torch.randint(0, 320, (2, 120), generator=torch.Generator().manual_seed(bits))
    row = compare_cache_generation(model, prompt, 8, settings(path, bits).model_copy(update=extra), selection)
    check(row, sparse_layers=2)


def test_logits_equal_a_recomputation_written_out_here(tmp_path):
    """One sparse layer, 16-bit labels: each decode step's logits equal a forward whose attention is written
    out here: label scores (heavy channels of q, float16 heavy channels of k, summed over the KV head's query
    heads), the top T keys, softmax attention over those."""
    from compress.attention.calibration.channels import read_channel_file
    from compress.calibrate.attention import override_attention
    from compress.attention.calibration.calibrate import attention_parts

    model = tiny_model(layers=2)
    path = random_channel_file(model, tmp_path / "c.json")
    prompt = torch.randint(0, 320, (1, 64), generator=torch.Generator().manual_seed(7))
    budget = 6
    ours = settings(path, 16, tokens=str(budget))
    tokens, logits = generate_tokens(model, prompt, 5, DoubleSparseCache(model, ours, dense_rule=None))
    heavy = read_channel_file(path, model.config, 2).kv_rows[1][:, :4]  # 1/16 of 64 channels
    sparse_module = attention_parts(model)[1].module

    def written_out(module, inner, query, key, value, mask, scaling=None, dropout=0.0, **kwargs):
        if module is not sparse_module or query.shape[2] != 1:
            return inner(module, query, key, value, mask, scaling=scaling, dropout=dropout, **kwargs)
        outputs = []
        for head in range(query.shape[1]):
            kv = head // 3
            group = range(3 * kv, 3 * kv + 3)
            score = sum(query[0, g, 0, heavy[kv]].float() @ key[0, kv][:, heavy[kv]].half().float().T for g in group)
            chosen = score.topk(budget).indices
            weights = torch.softmax(query[0, head, 0].float() @ key[0, kv, chosen].float().T * scaling, -1)
            outputs.append(weights @ value[0, kv, chosen].float())
        return torch.stack(outputs)[None, None].to(query.dtype), None

    from transformers import DynamicCache

    from compress.attention.evaluation.measure import _cache_argument

    cache = {_cache_argument(model): DynamicCache()}
    expected = []
    with torch.no_grad(), override_attention([p.module for p in attention_parts(model)], written_out):
        out = model(input_ids=prompt, use_cache=True, **cache)
        for step in range(tokens.shape[1]):
            expected.append(out.logits[:, -1].float())
            out = model(input_ids=tokens[:, step:step + 1], use_cache=True, **cache)
    expected = torch.stack(expected, 1)
    assert torch.equal(tokens, expected.argmax(-1))
    assert (logits - expected).abs().max() <= 5e-3 * expected.abs().max()
    dense = cache_logits(model, prompt, tokens)
    assert (dense - expected).abs().max() > 0.05 * expected.abs().max()  # 6 of 64+ tokens do change them


@pytest.mark.parametrize("tokens", ["1/8", "6"])
@pytest.mark.parametrize("extra", [{}, {"position_prior": True}])
def test_left_padded_batch_rows_decode_as_alone(tokens, extra, tmp_path):
    """Rows of different lengths, left-padded: each row's tokens are its tokens decoded alone (pads never
    chosen, the budget from the row's own context, the prior from its own positions)."""
    model = tiny_model(dtype=torch.float32)
    path = random_channel_file(model, tmp_path / "c.json", prior=True)
    ours = settings(path, 16, tokens=tokens).model_copy(update=extra)
    generator = torch.Generator().manual_seed(2)
    rows = [torch.randint(3, 320, (n,), generator=generator) for n in (70, 41, 56)]
    width = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([torch.zeros(width - len(r), dtype=torch.long), r]) for r in rows])
    mask = torch.stack([torch.arange(width) >= width - len(r) for r in rows]).long()
    cache = DoubleSparseCache(model, ours, dense_rule=None)
    batch, _ = generate_tokens(model, ids, 8, cache, attention_mask=mask)
    assert cache.steps == 2 * 7
    for i, row in enumerate(rows):
        alone, _ = generate_tokens(model, row[None], 8, DoubleSparseCache(model, ours, dense_rule=None))
        assert torch.equal(batch[i], alone[0]), i


PADDED = """
import json, sys
import torch
from compress.attention.decoding.cache import DoubleSparseCache, generate_tokens
from tests.test_attention_cache import padded_batch
from tests.test_attention_generate import settings, tiny_model
model = tiny_model(dtype=torch.float32)
ids, mask, rows = padded_batch()
ours = settings(sys.argv[1], 16, tokens="1/8").model_copy(update={"position_prior": True})
cache = DoubleSparseCache(model, ours, selection="topk", dense_rule=None)
batch, logits = generate_tokens(model, ids, 6, cache, attention_mask=mask)
alone = [generate_tokens(model, row[None], 6, DoubleSparseCache(model, ours, selection="topk", dense_rule=None)
                         )[0][0].tolist() for row in rows]
print(json.dumps({"batch": batch.tolist(), "logits": logits.tolist(), "alone": alone, "steps": cache.steps}))
"""


def padded_batch():
    """Left-padded rows of 70, 41, 41 and 56 tokens: (ids, mask, the rows)."""
    generator = torch.Generator().manual_seed(2)
    rows = [torch.randint(3, 320, (n,), generator=generator) for n in (70, 41, 41, 56)]
    width = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([torch.zeros(width - len(r), dtype=torch.long), r]) for r in rows])
    mask = torch.stack([torch.arange(width) >= width - len(r) for r in rows]).long()
    return ids, mask, rows


def test_left_padded_batches_run_the_kernels_in_the_interpreter(tmp_path):
    """Triton's interpreter: a left-padded batch runs the kernels run by run of equally padded rows (70 | 41 41 |
    56 tokens); each row's tokens are its tokens decoded alone through the kernels, and the logits are the
    PyTorch decode step's (the CPU path here, pads masked) within the kernels' float16 P·V rounding (float32
    label scores, topk: the same tokens chosen)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    model = tiny_model(dtype=torch.float32)
    path = random_channel_file(model, tmp_path / "c.json", prior=True)
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", PADDED, str(path)], env={**os.environ, "TRITON_INTERPRET": "1"},
                          cwd=root, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["batch"] == result["alone"] and result["steps"] == 2 * 5
    ids, mask, _ = padded_batch()
    ours = settings(path, 16, tokens="1/8").model_copy(update={"position_prior": True})
    tokens, logits = generate_tokens(model, ids, 6, DoubleSparseCache(model, ours, selection="topk", dense_rule=None),
                                     attention_mask=mask)  # this process: no TRITON_INTERPRET, the PyTorch path
    assert tokens.tolist() == result["batch"]
    kernels = torch.tensor(result["logits"])
    assert (kernels - logits).abs().max() <= 0.03 * logits.abs().max()


@pytest.mark.gpu
def test_gpu_left_padded_batches_run_the_kernels(tmp_path):
    """On CUDA a left-padded batch runs the kernels run by run: each row decodes as alone, and the first sparse
    step's logits are the CPU's PyTorch decode step's (same weights) within the kernels' rounding."""
    model = tiny_model("cuda", dtype=torch.float32)
    path = random_channel_file(model, tmp_path / "c.json", prior=True)
    ids, mask, rows = padded_batch()
    ours = settings(path, 16, tokens="1/8").model_copy(update={"position_prior": True})
    cache = DoubleSparseCache(model, ours, selection="topk", dense_rule=None)
    batch, logits = generate_tokens(model, ids.cuda(), 8, cache, attention_mask=mask.cuda())
    assert cache.steps == 2 * 7
    for i, row in enumerate(rows):
        alone, _ = generate_tokens(model, row[None].cuda(), 8,
                                   DoubleSparseCache(model, ours, selection="topk", dense_rule=None))
        assert torch.equal(batch[i], alone[0]), i
    cpu = tiny_model(dtype=torch.float32)
    _, reference = generate_tokens(cpu, ids, 2, DoubleSparseCache(cpu, ours, selection="topk", dense_rule=None),
                                   attention_mask=mask)
    assert (logits[:, :2].cpu() - reference).abs().max() <= 0.03 * reference.abs().max()


def test_sampling_follows_the_seed(tmp_path):
    model = tiny_model()
    path = random_channel_file(model, tmp_path / "c.json")
    prompt = torch.randint(0, 320, (2, 40), generator=torch.Generator().manual_seed(5))
    sample = {"do_sample": True, "top_k": 0, "top_p": 1.0, "temperature": 1.0}

    def sampled(cache, seed=0):
        torch.manual_seed(seed)
        return generate_tokens(model, prompt, 12, cache, **sample)[0]

    dense = sampled(None)
    assert torch.equal(sampled(DoubleSparseCache(model, settings(path, 4, tokens="1/1"), dense_rule=None)), dense)  # same logits
    sparse = DoubleSparseCache(model, settings(path, 4, tokens="4"), dense_rule=None)
    first = sampled(sparse)
    assert sparse.steps == 2 * 11 and first.shape == (2, 12) and int(first.max()) < 320
    assert torch.equal(sampled(DoubleSparseCache(model, settings(path, 4, tokens="4"), dense_rule=None)), first)


def test_other_caches_and_uninstall_leave_the_model_as_it_was(tmp_path):
    model = tiny_model()
    prompt = torch.randint(0, 320, (1, 30), generator=torch.Generator().manual_seed(6))
    before, before_logits = generate_tokens(model, prompt, 6)
    DoubleSparseCache(model, settings(random_channel_file(model, tmp_path / "c.json"), 4, tokens="4"))
    assert model.config._attn_implementation == f"{NAME}_sdpa"
    after, after_logits = generate_tokens(model, prompt, 6)  # transformers' own cache: dense
    assert torch.equal(after, before) and torch.equal(after_logits, before_logits)
    uninstall(model)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.gpu
@pytest.mark.parametrize("bits,selection", [(16, "topk"), (4, "threshold")])
def test_gpu_generate_with_kernels_is_the_evaluation_mode(bits, selection, tmp_path):
    model = tiny_model("cuda", layers=4)
    path = random_channel_file(model, tmp_path / "c.json", prior=True)
    prompt = torch.randint(0, 320, (2, 700), generator=torch.Generator().manual_seed(bits)).cuda()
    with_prior = settings(path, bits, "1/16").model_copy(update={"position_prior": True})
    check(compare_cache_generation(model, prompt, 8, with_prior, selection), sparse_layers=3)


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [4, 16])
def test_gpu_labels_appended_by_the_kernel_equal_labels_built_whole(bits, tmp_path):
    """On CUDA the first sparse step labels the cache, then the Triton kernel appends a token's labels a step:
    the label cache ends equal to labels built over the whole key cache."""
    from compress.attention.decode_kernels.decode_torch import label_cache

    model = tiny_model("cuda")
    path = random_channel_file(model, tmp_path / "c.json")
    prompt = torch.randint(0, 320, (2, 250), generator=torch.Generator().manual_seed(1)).cuda()
    cache = DoubleSparseCache(model, settings(path, bits, tokens="8"), dense_rule=None)
    generate_tokens(model, prompt, 12, cache)
    layer = cache.layers[2]
    assert cache.steps == 2 * 11 and layer.keys.shape[2] == 261
    assert torch.equal(layer.labels, label_cache(layer.keys, cache.plan.heavy[2], bits))


@pytest.mark.gpu
def test_gpu_dense_rule_keeps_short_steps_dense(tmp_path):
    from compress.attention.decoding.dense_rule import DenseRule, rule_for_device

    model = tiny_model("cuda")
    path = random_channel_file(model, tmp_path / "c.json")
    prompt = torch.randint(0, 320, (2, 30), generator=torch.Generator().manual_seed(1)).cuda()
    _, dense_logits = generate_tokens(model, prompt, 12)
    cache = DoubleSparseCache(model, settings(path, 4, tokens="4"), dense_rule=DenseRule("test", {6: 40}))
    _, logits = generate_tokens(model, prompt, 12, cache)
    assert cache.steps == 2 * 2
    scale = dense_logits.abs().max()
    assert (logits[:, :10] - dense_logits[:, :10]).abs().max() < 5e-3 * scale
    assert (logits[:, 10:] - dense_logits[:, 10:]).abs().max() > 0.05 * scale
    assert DoubleSparseCache(model, settings(path, 4)).plan.rule == rule_for_device("cuda", eager=True)


def test_the_package_exports_the_cache():
    import compress.attention
    from compress.attention.decoding import cache

    assert compress.attention.DoubleSparseCache is cache.DoubleSparseCache
    assert compress.attention.install is cache.install


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_other_families_generate(family, tmp_path):
    """Qwen2 (q/k biases) and Gemma3 (q/k norms, its own scaling, sliding-window layers: transformers' own
    sliding cache layers, dense): only Gemma3's global layers run sparse."""
    from compress.attention.config import DoubleSparsity
    from tests.test_attention_families import family_model

    layers = dict(num_hidden_layers=4, layer_types=["sliding_attention", "full_attention"] * 2)
    model = family_model(family, **layers) if family == "gemma3" else family_model(family)
    ours = DoubleSparsity(channel_file=str(random_channel_file(model, tmp_path / "c.json")), channels="1/4",
                          tokens="1/8", dense_layers=0, label_bits=16, labels="channels", position_prior=False)
    row = compare_cache_generation(model, torch.randint(0, 320, (2, 60), generator=torch.Generator().manual_seed(3)),
                                   6, ours, "topk")
    check(row, sparse_layers=2)
