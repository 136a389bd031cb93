"""`compress factorize` end to end on a tiny random Llama, the recipe stage, and bad input: exit 2, one line,
nothing written."""
import json

import pytest
import torch
from typer.testing import CliRunner

from compress.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("train", ["router", "router+experts"])
def test_factorize_eval_export_reloads_as_mixtral(train, tiny_model_dir, text_file, tmp_path):
    from transformers import AutoModelForCausalLM

    from compress.calibrate.data import TextSource, calibration_tokens
    from compress.factorize import FactorizeConfig, factorize_model
    from compress.model.loading import load_model

    out = tmp_path / "moe"
    result = invoke("factorize", tiny_model_dir, "--experts", 4, "--top-k", 2, "--split", "cluster", "--router", "par",
                    "--steps", 30,
                    "--text", text_file, "--nsamples", 8, "--seqlen", 64, "--device", "cpu", "--eval",
                    "--eval-text", text_file, "--eval-context", 64, "--eval-tokens", 512, "--out", out,
                    "--train", train, "--expert-steps", 5, "--expert-batch", 2)  # no --json: progress on stderr
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "compression.json").read_text())
    stage = manifest["stages"][0]["result"]
    assert (stage["end_to_end"] is None) == (train == "router")
    if train != "router":
        assert stage["end_to_end"]["tokens"] == 5 * 2 * 64 and stage["end_to_end"]["losses"][0]["distill"] > 0
        first, last = stage["end_to_end"]["losses"][0], stage["end_to_end"]["losses"][-1]
        assert (first["step"], last["step"], last["steps"]) == (0, 4, 5) and last["tokens_per_s"] > 0
        # stage B reports progress: step, loss and tokens/s, a plain line each without a terminal
        lines = [line for line in result.stderr.splitlines() if "stage B step" in line]
        assert [line.split("stage B step ")[1].split(":")[0] for line in lines] == ["1/5", "5/5"]
        assert f"loss {last['loss']:.4f}" in lines[-1] and "tokens/s" in lines[-1] and "\x1b" not in result.stderr
    assert (stage["experts"], stage["top_k"], stage["split"], stage["exports_to"]) == (4, 2, "cluster", "mixtral")
    assert stage["training_tokens"] == 8 * 64 and len(stage["layers"]) == 2
    assert all(len(layer["info"]["load"]) == 4 for layer in stage["layers"])
    assert manifest["calibration"]["nsamples"] == 8

    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(loaded).__name__ == "MixtralForCausalLM"
    # the same job in memory computes what the checkpoint computes
    model, tokenizer, _ = load_model(str(tiny_model_dir), "float32", "cpu")
    calibration = calibration_tokens(tokenizer, TextSource(path=str(text_file)), 8, 64, 0)
    factorize_model(model, FactorizeConfig(experts=4, top_k=2, split="cluster", router="par", steps=30, train=train, expert_steps=5,
                                           expert_batch=2), calibration)
    ids = torch.randint(0, 320, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=1e-5, rtol=0)


def test_steps_zero_needs_no_text_and_dry_run_prints_the_recipe(tiny_model_dir, tmp_path):
    result = invoke("factorize", tiny_model_dir, "--experts", 2, "--top-k", 1, "--router", "par", "--steps", 0,
                    "--split", "contiguous", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "factorize:" in result.stdout and "experts: 2" in result.stdout
    recipe = tmp_path / "r.yaml"
    recipe.write_text(result.stdout)
    ran = invoke("run", recipe, "--json", "--quiet")
    assert ran.exit_code == 0, ran.output
    assert json.loads(ran.stdout)["stages"][0]["result"]["training_tokens"] == 0


@pytest.mark.parametrize("args, message", [
    (["--experts", 3], "does not divide the intermediate size 128"),
    (["--experts", 4, "--granularity", 64], "does not divide"),
    (["--top-k", 5], "top_k 5 exceeds experts 4"),
    (["--top-k", 0], "--top-k"),
    (["--experts", 0], "--experts"),
    (["--steps", -1], "--steps"),
    (["--lr", 0], "--lr"),
    (["--split", "kmeans"], "--split"),
    (["--scale", "half"], "--scale"),
    (["--train", "experts"], "--train"),
    (["--train", "router+experts", "--expert-steps", 0], "--expert-steps"),
    (["--train", "router+experts", "--expert-lr", 0], "--expert-lr"),
    (["--active", 0.3], "not a multiple of 1/16"),
    (["--active", 0.5, "--experts", 4], "give active or experts, not both"),
    (["--shared", 1, "--experts", 4], "does not divide the intermediate size 128"),
    (["--router", "learned"], "--router"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    result = invoke("factorize", tiny_model_dir, "--router", "par", "--steps", 0, "--split", "contiguous", *args,
                    "--out", out, "--quiet")
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_families_without_a_stock_moe_write_a_compress_load_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM, GemmaConfig, GemmaForCausalLM

    import compress
    from tests.conftest import make_tokenizer

    torch.manual_seed(0)
    gemma = GemmaForCausalLM(GemmaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, head_dim=16))
    gemma.save_pretrained(tmp_path / "gemma")
    make_tokenizer().save_pretrained(tmp_path / "gemma")
    out = tmp_path / "out"
    result = invoke("factorize", tmp_path / "gemma", "--steps", 0, "--experts", 4, "--top-k", 4, "--split", "contiguous",
                    "--out", out,
                    "--json", "--quiet", "--eval", "--eval-text", tmp_path / "gemma" / "tokenizer.json",
                    "--eval-context", 32, "--eval-tokens", 128)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["stages"][0]["result"]["exports_to"].startswith("compress-factorized")
    after = report["stages"][1]["result"]
    assert after["after"]["perplexity"] == pytest.approx(after["before"]["perplexity"], rel=1e-4)
    loaded = compress.load(out)
    ids = torch.randint(0, 320, (2, 24))
    with torch.no_grad():  # k = E with a zero router: the dense model's function, through the saved checkpoint
        torch.testing.assert_close(loaded(ids).logits, gemma.eval()(ids).logits, atol=1e-5, rtol=0)
    with pytest.raises(Exception):  # transformers alone finds no weights it knows, never a half-loaded model
        AutoModelForCausalLM.from_pretrained(out)
    evaluated = invoke("eval", out, "--text", tmp_path / "gemma" / "tokenizer.json", "--context", 32, "--max-tokens", 128,
                       "--json", "--quiet")
    assert evaluated.exit_code == 0, evaluated.output
def test_a_recipe_factorizes_then_prunes_each_expert_and_exports_mixtral(tiny_model_dir, text_file, tmp_path):
    from transformers import AutoModelForCausalLM

    from compress.pattern import nm_mask

    recipe = tmp_path / "r.yaml"
    out = tmp_path / "moe"
    recipe.write_text(f"calibrate: {{text: {text_file}, nsamples: 8, seqlen: 64}}\nstages:\n"
                      "  - factorize: {experts: 4, top_k: 2, split: cluster, steps: 20}\n"
                      "  - prune: {method: wanda, pattern: '2:4'}\n"
                      f"  - eval: {{text: {text_file}, context: 64, tokens: 256}}\n  - export: {{format: hf}}\n")
    result = invoke("run", recipe, tiny_model_dir, "--out", out, "--json", "--quiet")
    assert result.exit_code == 0, result.output
    pruned = json.loads(result.stdout)["stages"][1]["result"]
    assert pruned["overall_sparsity"] == pytest.approx(0.5)
    assert len(pruned["linears"]) == 2 * 4 * 2 and "expert" in pruned["targets"]
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    for layer in loaded.model.layers:
        experts = layer.mlp.experts
        for weight in (*experts.gate_up_proj, *experts.down_proj):  # every expert's Linears are 2:4
            assert torch.equal(weight != 0, (weight != 0) & nm_mask(weight.abs().float() + 1e-30, 2, 4))
        assert layer.mlp.gate.weight.count_nonzero() == layer.mlp.gate.weight.numel()  # routers stay dense
    assert layer.self_attn.q_proj.weight.count_nonzero() == layer.self_attn.q_proj.weight.numel()


@pytest.mark.parametrize("stage, message", [("{method: wanda, permute: heuristic}", "permute does not apply"),
                                            ("{method: wanda, targets: 'q_proj'}", "targets does not apply"),
                                            ("{method: wanda, pattern: '2:64'}", "divisible by 64")])
def test_pruning_after_factorize_refuses_what_does_not_apply(stage, message, tiny_model_dir, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("calibrate: {nsamples: 4, seqlen: 32}\nstages:\n  - factorize: {steps: 0}\n"
                      f"  - prune: {stage}\n")
    result = invoke("run", recipe, tiny_model_dir, "--quiet")
    assert result.exit_code == 2 and message in result.output, result.output


def test_active_share_by_default_exports_qwen2_moe_with_the_shared_neurons(tiny_model_dir, text_file, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "moe"
    result = invoke("factorize", tiny_model_dir, "--text", text_file, "--nsamples", 8, "--seqlen", 64, "--eval",
                    "--eval-text", text_file, "--eval-context", 64, "--eval-tokens", 256, "--json", "--out", out)
    assert result.exit_code == 0, result.output
    stage = json.loads(result.stdout)["stages"][0]["result"]
    assert (stage["active"], stage["shared"], stage["experts"], stage["top_k"], stage["router"]) == (0.5, 4, 12, 4, "analytic")
    assert stage["ffn_flops_share"] == 0.5 and stage["exports_to"] == "qwen2_moe"
    assert all(layer["info"]["shared_neurons"] == 128 * 4 // 16 for layer in stage["layers"])
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert type(loaded).__name__ == "Qwen2MoeForCausalLM" and loaded.config.shared_expert_intermediate_size == 32
