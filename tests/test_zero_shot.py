"""Zero-shot accuracy through lm-evaluation-harness on a tiny model: lm-eval's acc and acc_norm equal a
brute-force recomputation of their definitions (dense and with Double Sparsity attention), the offline task
makes no network call, and a recipe's eval stage runs tasks with Double Sparsity settings."""
import json
import math
import socket

import pytest
import torch
from typer.testing import CliRunner

from compress.cli import app
from compress.zero_shot import accuracy, next_sentence, zero_shot
from tests.conftest import save_tiny_model

pytest.importorskip("lm_eval")

TASK = next_sentence.TASK
ITEMS = 8


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    """The tiny Llama with room for the task's longest passages (its byte-level tokens are short)."""
    from compress.model.loading import load_model

    path = save_tiny_model(tmp_path_factory.mktemp("zero-shot") / "tiny", max_position_embeddings=2048)
    model, tokenizer, _ = load_model(str(path), "float32", "cpu")
    return path, model, tokenizer


@pytest.fixture(scope="module")
def items() -> list[dict]:
    from compress.defaults.assets import EVALUATION_NOVEL, austen_novels

    return next_sentence.build_items(austen_novels()[EVALUATION_NOVEL])[:ITEMS]


@pytest.fixture(scope="module")
def channel_file(long_model, tmp_path_factory):
    from tests.conftest import TEXT

    folder = tmp_path_factory.mktemp("channels")
    (folder / "text.txt").write_text(TEXT)
    result = invoke("attention", "calibrate", long_model[0], "--out", folder / "channels.json", "--text",
                    folder / "text.txt", "--nsamples", 2, "--seqlen", 64, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    return folder / "channels.json"


@torch.no_grad()
def brute_force(model, tokenizer, item: dict) -> list[float]:
    """Each choice's summed token log-probabilities after the context and a space, from one plain forward:
    its tokens are those the whole text has beyond the context's own."""
    scores = []
    context = tokenizer(item["context"])["input_ids"]
    for choice in item["choices"]:
        whole = tokenizer(item["context"] + " " + choice)["input_ids"]
        assert whole[:len(context)] == context and len(whole) <= model.config.max_position_embeddings
        logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
        scores.append(sum(logp[len(context) - 1 + k, token].item() for k, token in enumerate(whole[len(context):])))
    return scores


def definitions(scores: list[list[float]], items: list[dict]) -> dict:
    """acc: argmax of the scores is gold; acc_norm: argmax of score / the choice's length in characters (what
    lm-eval computes; its docs say bytes, the same for this ASCII novel); stderr: sample std / sqrt(n)."""
    assert all(c.isascii() for item in items for c in item["choices"])
    hits = [max(range(4), key=lambda c: s[c]) == item["gold"] for s, item in zip(scores, items)]
    norm = [max(range(4), key=lambda c: s[c] / len(item["choices"][c])) == item["gold"]
            for s, item in zip(scores, items)]

    def stderr(values):
        mean = sum(values) / len(values)
        return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))

    return {"acc": sum(hits) / len(hits), "acc_stderr": stderr(hits), "acc_norm": sum(norm) / len(norm),
            "acc_norm_stderr": stderr(norm)}


def settings_for(channel_file):
    from compress.attention.config import DoubleSparsity

    return DoubleSparsity(channel_file=str(channel_file), channels="1/4", tokens="16", dense_layers=0,
                          labels="channels", position_prior=False)


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "double-sparsity"])
def test_accuracy_equals_the_brute_force_definition(long_model, items, channel_file, sparse):
    from compress.attention.evaluation.runtime import sparse_attention

    _, model, tokenizer = long_model
    settings = settings_for(channel_file) if sparse else None
    results = zero_shot(model, tokenizer, [TASK], limit=ITEMS, double_sparsity=settings, context=256,
                        log_samples=True, batch_size=4)
    with sparse_attention(model, settings, 256) if sparse else torch.no_grad():
        scores = [brute_force(model, tokenizer, item) for item in items]
    logged = sorted(results["samples"][TASK], key=lambda s: s["doc_id"])
    assert [s["doc"]["choices"] for s in logged] == [item["choices"] for item in items]
    for sample, expected in zip(logged, scores):
        assert [r[0] for r in sample["filtered_resps"]] == pytest.approx(expected, abs=1e-3)
        gaps = sorted(expected)  # no near-tie that float noise could flip
        assert gaps[-1] - gaps[-2] > 1e-2
    reported = accuracy(results, TASK)
    expected = definitions(scores, items)
    assert {k: reported[k] for k in expected} == pytest.approx(expected, abs=1e-12)
    assert reported["items"] == ITEMS and reported["chance"] == 0.25
    assert "pretty_env_info" not in results and json.loads(json.dumps(results)) == results


def test_sparse_attention_changes_the_scores(long_model, channel_file):
    _, model, tokenizer = long_model
    dense = zero_shot(model, tokenizer, [TASK], limit=4, log_samples=True)
    sparse = zero_shot(model, tokenizer, [TASK], limit=4, log_samples=True, double_sparsity=settings_for(channel_file),
                       context=256)
    scores = [[[r[0] for r in s["filtered_resps"]] for s in run["samples"][TASK]] for run in (dense, sparse)]
    assert scores[0] != scores[1]


def test_the_offline_task_makes_no_network_call(long_model, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network call")

    _, model, tokenizer = long_model
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    results = zero_shot(model, tokenizer, [TASK], limit=2)
    assert results["n-samples"][TASK] == {"original": next_sentence.ITEMS, "effective": 2}


def test_unknown_task_is_refused_in_one_line(tiny_model_dir):
    result = invoke("eval", tiny_model_dir, "--tasks", "persuasion_next_sentense", "--device", "cpu")
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert "unknown zero-shot task 'persuasion_next_sentense'" in result.output


def test_eval_command_adds_zero_shot_to_each_row(long_model):
    result = invoke("eval", long_model[0], "--tasks", TASK, "--limit", 3, "--device", "cpu", "--max-tokens", 256,
                    "--context", 64, "--json")
    assert result.exit_code == 0, result.output
    row, = json.loads(result.output)["results"]
    assert row["zero_shot"]["n-samples"][TASK]["effective"] == 3 and "acc,none" in row["zero_shot"]["results"][TASK]
    table = invoke("eval", long_model[0], "--tasks", TASK, "--limit", 3, "--device", "cpu", "--max-tokens", 256,
                   "--context", 64)
    assert table.exit_code == 0 and "zero-shot accuracy" in table.output and "25%" in table.output


def test_eval_double_sparsity_scores_tasks_dense_and_sparse(long_model, channel_file):
    result = invoke("eval", long_model[0], "--double-sparsity", channel_file, "--channels", "1/4", "--tokens", "16",
                    "--dense-layers", 0, "--tasks", TASK, "--limit", 2, "--device", "cpu", "--max-tokens", 256,
                    "--context", 64, "--json")
    assert result.exit_code == 0, result.output
    dense, sparse = json.loads(result.output)["results"]
    assert "kept_share" in sparse and "kept_share" not in dense
    for row in (dense, sparse):
        assert row["zero_shot"]["n-samples"][TASK]["effective"] == 2


def test_recipe_eval_stage_runs_tasks_with_double_sparsity(long_model, tmp_path):
    """An attention stage writes the channel file and a later eval stage reads it in the same job (it is
    published when the job ends); the eval stage's Double Sparsity settings are DoubleSparsity's keys."""
    from tests.conftest import TEXT

    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    channels = tmp_path / "ch.json"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"calibrate: {{nsamples: 2, seqlen: 64, text: {text}}}\n"
        "stages:\n"
        f"  - attention: {{channel_file: {channels}}}\n"
        f"  - eval: {{text: {text}, context: 64, tokens: 256, tasks: [{TASK}], limit: 3,\n"
        f"            double_sparsity: {{channel_file: {channels}, channels: 1/4, tokens: '16', dense_layers: 0}}}}\n")
    result = invoke("run", recipe, long_model[0], "--json", "--quiet", "--set", "device=cpu")
    assert result.exit_code == 0, result.output
    stage = json.loads(result.output)["stages"][-1]["result"]
    assert 0 < stage["after"]["kept_share"] < 1 and "kept_share" not in stage["before"]
    for key in ("zero_shot", "zero_shot_before"):
        assert stage[key]["n-samples"][TASK]["effective"] == 3 and "acc_stderr,none" in stage[key]["results"][TASK]
    assert channels.is_file()
    # the file now exists: a job with only the eval stage reads it; a missing one is refused before any work
    alone = tmp_path / "alone.yaml"
    alone.write_text(f"stages:\n  - eval: {{text: {text}, context: 64, tokens: 128, before: false, tasks: [{TASK}], "
                     f"limit: 2, double_sparsity: {{channel_file: {channels}, tokens: '16', dense_layers: 0}}}}\n")
    assert invoke("run", alone, long_model[0], "--quiet", "--set", "device=cpu").exit_code == 0
    missing = invoke("run", alone, long_model[0], "--quiet", "--set", "device=cpu", "--set",
                     f"eval.double_sparsity.channel_file={tmp_path / 'none.json'}")
    assert missing.exit_code == 2 and "no such channel file" in missing.output


def test_a_hub_task_without_the_hub_is_one_line_and_exit_2(tiny_model_dir, monkeypatch, tmp_path):
    """lm-eval's own tasks download their data: where the hub cannot be reached (forced here by the offline
    switches and an empty cache, so the test never uses a network) the job ends in one line naming the task."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    out = tmp_path / "out"
    result = invoke("eval", tiny_model_dir, "--tasks", "arc_easy", "--limit", 2, "--device", "cpu", "--out", out)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: could not load the data of arc_easy")
    assert "Traceback" not in result.output and not out.exists()
