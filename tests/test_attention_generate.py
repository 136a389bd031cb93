"""Double Sparsity inside real decoding (compress.attention.decoding.generate): greedy decoding with the label cache
equals dense decoding through transformers' cache when T covers the context, and the evaluation mode
(compress.attention.evaluation.runtime) with the same settings otherwise; the Triton kernels in Triton's interpreter
(GQA group 3, head_dim 64, as the default model) and on a GPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from compress.attention.decoding.generate_check import (appended_labels_exact, appended_tokens_match, compare_decoding,
                                                       failed_rules, host_syncs, random_channel_file)

ROOT = Path(__file__).resolve().parents[1]


def tiny_model(device="cpu", layers=3, dtype=torch.float16):
    """A random Llama (float16 unless told) with the default model's head layout: 9 query heads on 3 KV heads of 64."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=320, hidden_size=72, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=1024,
                         tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).eval().to(device, dtype)


def settings(path, bits, tokens="1/8"):
    from compress.attention.config import DoubleSparsity

    return DoubleSparsity(channel_file=str(path), channels="1/16", tokens=tokens, dense_layers=1, label_bits=bits,
                          labels="channels", position_prior=False)


CASES = [(16, "topk"), (4, "threshold")]


def check(row: dict, sparse_layers: int, exact_bound: float = 5e-3) -> None:
    """The rules of generate_check.failed_rules (the decode benchmark passes a row by the same)."""
    assert not failed_rules(row, sparse_layers, exact_bound), (failed_rules(row, sparse_layers, exact_bound), row)


@pytest.mark.parametrize("bits,selection", CASES)
def test_pytorch_path_matches_dense_and_evaluation_mode(bits, selection, tmp_path):
    model = tiny_model()
    path = random_channel_file(model, tmp_path / "channels.json")
    prompt = torch.randint(0, 320, (2, 120), generator=torch.Generator().manual_seed(bits))
    check(compare_decoding(model, prompt, 8, settings(path, bits), selection), sparse_layers=2)


def test_position_prior_decodes_as_the_evaluation_mode(tmp_path):
    """With the channel file's position prior, decode steps choose as eval --position-prior does, and the
    prior changes what they choose."""
    model = tiny_model()
    path = random_channel_file(model, tmp_path / "channels.json", prior=True)
    prompt = torch.randint(0, 320, (2, 120), generator=torch.Generator().manual_seed(3))
    plain = compare_decoding(model, prompt, 8, settings(path, 16), "topk")
    row = compare_decoding(model, prompt, 8, settings(path, 16).model_copy(update={"position_prior": True}), "topk")
    check(row, sparse_layers=2)
    assert abs(row["sparse_logit_change_vs_dense"] - plain["sparse_logit_change_vs_dense"]) > 1e-3


@pytest.mark.parametrize("bits,selection", CASES)
def test_projected_labels_decode_as_the_evaluation_mode(bits, selection, tmp_path):
    """Projected labels (eval --labels projection): the label cache holds k B, the query scored is q A."""
    model = tiny_model()
    path = random_channel_file(model, tmp_path / "channels.json", projection=True)
    prompt = torch.randint(0, 320, (2, 120), generator=torch.Generator().manual_seed(4))
    plain = compare_decoding(model, prompt, 8, settings(path, bits), selection)
    row = compare_decoding(model, prompt, 8, settings(path, bits).model_copy(update={"labels": "projection"}),
                           selection)
    check(row, sparse_layers=2)
    assert abs(row["sparse_logit_change_vs_dense"] - plain["sparse_logit_change_vs_dense"]) > 1e-3


INTERPRETED = f"""
import json, tempfile
import torch
from compress.attention.decoding.generate_check import random_channel_file, compare_decoding, compare_cache_generation
from compress.attention.decoding.generate import decoder_from_settings
from compress.attention.decoding.generate_check import appended_labels_exact, appended_tokens_match, host_syncs
from tests.test_attention_generate import settings, tiny_model
model = tiny_model()
rows = []
with tempfile.TemporaryDirectory() as tmp:
    path = random_channel_file(model, tmp + "/channels.json")
    for bits, selection in [(16, "topk"), (4, "threshold")]:
        prompt = torch.randint(0, 320, (2, 120), generator=torch.Generator().manual_seed(bits))
        rows.append(compare_decoding(model, prompt, 6, settings(path, bits), selection))
    with_prior = random_channel_file(model, tmp + "/prior.json", prior=True)
    prompt = torch.randint(0, 320, (2, 120), generator=torch.Generator().manual_seed(5))
    rows.append(compare_decoding(model, prompt, 6, settings(with_prior, 4).model_copy(update={{"position_prior": True}}),
                                 "threshold"))
    projected = random_channel_file(model, tmp + "/projected.json", projection=True, prior=True)
    rows.append(compare_decoding(model, prompt, 6, settings(projected, 4).model_copy(
        update={{"labels": "projection", "position_prior": True}}), "threshold"))
    syncs = host_syncs(model, decoder_from_settings(model, settings(path, 4)), 2, 300)
    prompt = torch.randint(0, 320, (2, 120), generator=torch.Generator().manual_seed(6))
    cache_rows = [compare_cache_generation(model, prompt, 6, settings(projected, 4).model_copy(
        update={{"position_prior": True}}), "threshold")]  # model.generate with a DoubleSparseCache
print(json.dumps({{"rows": rows, "cache_rows": cache_rows, "append": appended_labels_exact("cpu"), "syncs": syncs,
                  "tokens": appended_tokens_match("cpu")}}))
"""


def test_triton_kernels_in_the_interpreter_match():
    pytest.importorskip("triton")
    # T = 16 of 128 tokens: the threshold select samples (its capacity, 32, is below the context)
    env = {**os.environ, "TRITON_INTERPRET": "1"}  # chosen when the kernels are defined: a fresh process
    done = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(result["append"]) and all(result["tokens"].values()), result["tokens"]
    assert result["syncs"] == {"sparse": 0, "dense": 0, "skip": 0}  # the kernels' launch code reads no values
    # The kernels round P to float16 before P V, as on a GPU; the CPU's evaluation mode keeps it in float32.
    # One float16 ulp added to every attention output moves this tiny random model's logits by 2.1% of the
    # largest (measured), so the exact rows get that bound here; the steps' kernel outputs themselves are
    # checked against the PyTorch math in test_attention_kernels.py.
    for row in result["rows"] + result["cache_rows"]:
        check(row, sparse_layers=2, exact_bound=0.03)


@pytest.mark.gpu
def test_gpu_appended_labels_exact():
    assert all(appended_labels_exact("cuda"))


@pytest.mark.gpu
def test_gpu_appended_tokens_match():
    """append_token: a decode step's key, value and labels in one launch (generate_check.appended_tokens_match)."""
    found = appended_tokens_match("cuda")
    assert all(found.values()), found


@pytest.mark.gpu
@pytest.mark.parametrize("bits,selection", CASES + [(16, "threshold"), (4, "topk-half")])
def test_gpu_kernels_match(bits, selection, tmp_path):
    model = tiny_model("cuda", layers=4)
    path = random_channel_file(model, tmp_path / "channels.json")
    prompt = torch.randint(0, 320, (2, 700), generator=torch.Generator().manual_seed(bits)).cuda()
    check(compare_decoding(model, prompt, 8, settings(path, bits, "1/16"), selection), sparse_layers=3)


@pytest.mark.gpu
@pytest.mark.parametrize("bits,selection", [(4, "threshold"), (16, "topk")])
@pytest.mark.parametrize("labels", ["channels", "projection"])
def test_gpu_kernels_with_position_prior_match(bits, selection, labels, tmp_path):
    model = tiny_model("cuda", layers=4)
    path = random_channel_file(model, tmp_path / "channels.json", prior=True, projection=True)
    prompt = torch.randint(0, 320, (2, 700), generator=torch.Generator().manual_seed(bits)).cuda()
    with_prior = settings(path, bits, "1/16").model_copy(update={"position_prior": True, "labels": labels})
    check(compare_decoding(model, prompt, 8, with_prior, selection), sparse_layers=3)


def test_caches_grow_by_appending(tmp_path):
    """Keys and values match transformers' cache; labels appended step by step equal labels built over the
    whole key cache; the buffers grew past their first size."""
    from transformers import DynamicCache

    from compress.attention.decoding.generate import decoder_from_settings, greedy_generate
    from compress.attention.decode_kernels.decode_torch import label_cache
    from compress.attention.evaluation.measure import _cache_argument

    model = tiny_model(layers=2)
    decoder = decoder_from_settings(model, settings(random_channel_file(model, tmp_path / "c.json"), 4))
    prompt = torch.randint(0, 320, (1, 5), generator=torch.Generator().manual_seed(0))
    tokens, _ = greedy_generate(model, prompt, 12, decoder, reserve=False)
    cache = DynamicCache()
    with torch.no_grad():
        model(input_ids=torch.cat([prompt, tokens[:, :-1]], 1), use_cache=True, **{_cache_argument(model): cache})
    store = decoder.stores[1]
    keys, values, labels = store.cached()
    assert store.length == 16 and store.keys.shape[2] > 10  # 2 x the prompt at first, then doubled
    expected_keys = cache.layers[1].keys if hasattr(cache, "layers") else cache.key_cache[1]
    torch.testing.assert_close(keys, expected_keys, rtol=2e-3, atol=2e-3)
    assert torch.equal(labels, label_cache(keys, decoder.heavy[1], 4))


def test_unsupported_settings_are_refused(tmp_path):
    from compress.attention.decoding.generate import decoder_from_settings
    from compress.errors import BadInput

    model = tiny_model(layers=2)
    path = random_channel_file(model, tmp_path / "c.json")
    for change in ({"tokens": "top-p:0.9"}, {"sink": 4}, {"label_bits": 8}, {"per_kv_head": False},
                   {"position_prior": True},  # a file without a prior
                   {"labels": "projection"},  # a file without projected labels
                   {"dense_layers": 2}):  # no layer left sparse
        with pytest.raises(BadInput):
            decoder_from_settings(model, settings(path, 4).model_copy(update=change))


def test_benchmark_architecture_is_the_default_models():
    from compress.defaults.assets import MODEL_NAME, cache_dir

    stored = cache_dir() / "models" / MODEL_NAME / "config.json"
    if not stored.is_file():
        pytest.skip("the default model is not cached here")
    from benchmarks import attention_decode

    config = json.loads(stored.read_text())
    for key, value in attention_decode.ARCHITECTURE.items():
        assert config[key] == pytest.approx(value) if isinstance(value, float) else config[key] == value, key


def test_generate_command(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from compress.cli import app

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    channels = random_channel_file(model, tmp_path / "c.json", prior=True, projection=True)  # the defaults read both
    base = ["attention", "generate", str(tiny_model_dir), "--double-sparsity", str(channels), "--device", "cpu",
            "--new-tokens", "5", "--dense-layers", "1", "--prompt", "It is a truth universally acknowledged, that a"]
    plain = [*base[:4], str(random_channel_file(model, tmp_path / "plain.json")), *base[5:]]  # no prior, no projection
    runner = CliRunner()
    done = runner.invoke(app, base + ["--tokens", "4", "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert result["new_tokens"] == 5 and result["kept_per_step"] == 4 and not result["kernels"]
    everything = json.loads(runner.invoke(app, base + ["--tokens", "1000", "--json"]).stdout)
    assert everything["agreement"] == 1.0 and everything["dense"] == everything["sparse"]  # T ≥ context: dense
    without_prompt = base[:-2]
    for arguments, word in ((base + ["--tokens", "top-p:0.9"], "top-p"), (base + ["--label-bits", "8"], "label-bits"),
                            (without_prompt + ["--prompt-file", str(tmp_path / "none.txt")], "no such file"),
                            (base + ["--channels", "99"], "channels"), (base + ["--tokens", "0"], "tokens"),
                            (plain + ["--labels", "channels"], "position prior"),  # the default prior, a file without
                            (plain + ["--no-position-prior"], "projected labels"), (base + ["--labels", "pca"], "labels"),
                            (base[:-4] + ["--dense-layers", "99"] + base[-2:], "sparse")):
        done = runner.invoke(app, arguments)
        assert done.exit_code == 2 and len(done.output.strip().splitlines()) == 1, (arguments, done.output)
        assert word in done.output, (word, done.output)


@pytest.mark.parametrize("family", ["qwen2", "gemma3"])
def test_other_families_decode(family, tmp_path):
    """Qwen2 (q/k biases) and Gemma3 (q/k norms, its own scaling, sliding-window layers kept dense over their
    window): the same equalities; only Gemma3's global layers run sparse."""
    from compress.attention.config import DoubleSparsity
    from tests.test_attention_families import family_model

    layers = dict(num_hidden_layers=4, layer_types=["sliding_attention", "full_attention"] * 2)
    model = family_model(family, **layers) if family == "gemma3" else family_model(family)
    settings = DoubleSparsity(channel_file=str(random_channel_file(model, tmp_path / "c.json")), channels="1/4",
                              tokens="1/8", dense_layers=0, label_bits=16, labels="channels", position_prior=False)
    row = compare_decoding(model, torch.randint(0, 320, (2, 60), generator=torch.Generator().manual_seed(3)), 6,
                           settings, "topk")
    check(row, sparse_layers=2)


def test_a_decode_step_reads_no_tensor_value_on_the_host(tmp_path):
    """No .item() / bool(tensor) in a decode step (transformers' forward included: the prepared 4D mask keeps
    its mask code from inspecting position_ids), so one CUDA graph can hold the step."""
    from compress.attention.decoding.generate import decoder_from_settings

    model = tiny_model()
    decoder = decoder_from_settings(model, settings(random_channel_file(model, tmp_path / "c.json"), 4))
    assert host_syncs(model, decoder, 2, 300) == {"sparse": 0, "dense": 0, "skip": 0}
