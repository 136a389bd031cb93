"""Double Sparsity channel files: the reference's/SGLang's layout, statistics over every window, planted
outlier channels found, bad inputs refused with exit 2."""
import json

import pytest
import torch
from typer.testing import CliRunner

from compress.cli import app
from tests.conftest import save_tiny_model, tiny_llama_config

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def sglang_style_rows(path, layer: int, kind: str, heavy: int) -> torch.Tensor:
    """Written from SGLang's documented reading: the layer's key, every row cut to its first `heavy` entries."""
    config = json.loads(open(path).read())
    return torch.tensor(config[f"model.layers.{layer}.self_attn.{kind}_proj"])[:, :heavy].contiguous()


@pytest.mark.parametrize("mode, rows", [("qk", 4), ("q", 4), ("k", 2)])
def test_file_layout_matches_the_reference(tiny_model_dir, text_file, tmp_path, mode, rows):
    out = tmp_path / "channels.json"
    result = invoke("attention", "calibrate", tiny_model_dir, "--out", out, "--mode", mode, "--text", text_file,
                    "--nsamples", 3, "--seqlen", 32, "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    head_dim = 16  # tiny Llama: 64 hidden / 4 heads
    assert set(data) == {f"model.layers.{i}.self_attn.{mode}_proj" for i in range(2)} | {"compress"}
    for i in range(2):
        table = torch.tensor(data[f"model.layers.{i}.self_attn.{mode}_proj"])
        assert table.shape == (rows, head_dim)
        assert all(sorted(row.tolist()) == list(range(head_dim)) for row in table)
        kv = torch.tensor(data["compress"]["kv_heads"][f"model.layers.{i}.self_attn.{mode}_proj"])
        assert kv.shape == (2, head_dim) and all(sorted(row.tolist()) == list(range(head_dim)) for row in kv)
        heavy = sglang_style_rows(out, i, mode, 4)
        assert heavy.shape == (rows, 4) and heavy.dtype == torch.int64
    assert data["compress"]["tokens"] == 3 * 32 and data["compress"]["model"]["num_kv_heads"] == 2


def _planted_model(scale: float = 30.0):
    """A tiny Llama whose q and k projections blow up channel pair (c, c + d/2) of every head (a RoPE pair,
    so the outlier survives rotation); c differs per head."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    d, planted = 16, {}
    for layer in model.model.layers:
        attn = layer.self_attn
        with torch.no_grad():
            for h in range(4):
                c = (3 + 2 * h) % (d // 2)
                planted[h] = {c, c + d // 2}
                attn.q_proj.weight[h * d + c] *= scale
                attn.q_proj.weight[h * d + c + d // 2] *= scale
            for kv in range(2):  # each KV head carries the planted pairs of both query heads that read it
                for h in (2 * kv, 2 * kv + 1):
                    for c in planted[h]:
                        attn.k_proj.weight[kv * d + c] *= scale
    return model, planted


@pytest.mark.parametrize("mode", ["qk", "q"])
def test_planted_outlier_channels_rank_first(mode):
    from compress.attention.calibration.calibrate import channel_statistics, rank_channels
    from compress.model.roles import HeadLayout

    model, planted = _planted_model()
    windows = torch.randint(3, 320, (2, 48), generator=torch.Generator().manual_seed(1))
    rows, kv_rows = rank_channels(channel_statistics(model, windows, mode), mode, HeadLayout.of(model.config))
    for layer_rows, layer_kv in zip(rows, kv_rows):
        for h in range(4):
            assert set(layer_rows[h, :2].tolist()) == planted[h]
        for kv in range(2):
            assert set(layer_kv[kv, :4].tolist()) == planted[2 * kv] | planted[2 * kv + 1]


def test_k_mode_ranks_the_planted_key_channels():
    from compress.attention.calibration.calibrate import channel_statistics, rank_channels
    from compress.model.roles import HeadLayout

    model, planted = _planted_model()
    windows = torch.randint(3, 320, (2, 48), generator=torch.Generator().manual_seed(1))
    rows, _ = rank_channels(channel_statistics(model, windows, "k"), "k", HeadLayout.of(model.config))
    for kv in range(2):
        assert set(rows[0][kv, :4].tolist()) == planted[2 * kv] | planted[2 * kv + 1]


def test_statistics_sum_over_every_window():
    """The reference's qk statistic keeps only the last block; ours is the sum over all windows, and it
    equals |q ⊙ k| recomputed by hand from the projections and RoPE."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from compress.attention.calibration.calibrate import channel_statistics

    torch.manual_seed(0)
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(tiny_llama_config(num_hidden_layers=1)).eval()
    windows = torch.randint(3, 320, (3, 20), generator=torch.Generator().manual_seed(2))
    together = channel_statistics(model, windows, "qk")
    expected = torch.zeros(4, 16, dtype=torch.float64)
    attn = model.model.layers[0].self_attn
    with torch.no_grad():
        for window in windows:
            hidden = model.model.layers[0].input_layernorm(model.model.embed_tokens(window[None]))
            q = attn.q_proj(hidden).view(1, 20, 4, 16).transpose(1, 2)
            k = attn.k_proj(hidden).view(1, 20, 2, 16).transpose(1, 2)
            cos, sin = model.model.rotary_emb(hidden, torch.arange(20)[None])
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            expected += (q * k.repeat_interleave(2, dim=1)).abs().sum(dim=(0, 2)).double()
    assert together.tokens == 60 and together.windows == 3
    torch.testing.assert_close(together.sums[0], expected, rtol=1e-5, atol=1e-6)


def test_bad_inputs_exit_2(tiny_model_dir, text_file, tmp_path):
    base = ["attention", "calibrate", tiny_model_dir, "--text", text_file, "--nsamples", 1, "--seqlen", 16,
            "--device", "cpu", "--quiet"]
    foreign = tmp_path / "notes.json"
    foreign.write_text('{"mine": 1}')
    cases = [
        (["--out", tmp_path / "a.json", "--mode", "qv"], "--mode"),
        (["--out", tmp_path / "a.json", "--nsamples", 0], "--nsamples"),
        (["--out", foreign], "already exists"),
        (["--out", foreign, "--force"], "not a channel file"),
        (["--out", tmp_path / "missing" / "a.json"], "does not exist"),
    ]
    for extra, needle in cases:
        result = invoke(*base, *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert needle in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert foreign.read_text() == '{"mine": 1}'
    assert not (tmp_path / "a.json").exists()


def test_attention_stage_in_a_recipe_writes_the_same_file(tiny_model_dir, text_file, tmp_path):
    """A recipe's attention stage ranks on the recipe's calibration windows: the same file as the command."""
    recipe = tmp_path / "r.yaml"
    staged = tmp_path / "staged.json"
    recipe.write_text(f"calibrate: {{nsamples: 2, seqlen: 32, text: {text_file}}}\n"
                      f"stages:\n  - attention: {{channel_file: {staged}}}\n")
    result = invoke("run", recipe, tiny_model_dir, "--json", "--quiet", "--set", "device=cpu")
    assert result.exit_code == 0, result.output
    direct = tmp_path / "direct.json"
    assert invoke("attention", "calibrate", tiny_model_dir, "--out", direct, "--text", text_file, "--nsamples", 2,
                  "--seqlen", 32, "--device", "cpu", "-q").exit_code == 0
    a, b = json.loads(staged.read_text()), json.loads(direct.read_text())
    assert {k: v for k, v in a.items() if k != "compress"} == {k: v for k, v in b.items() if k != "compress"}
    again = invoke("run", recipe, tiny_model_dir, "--quiet", "--set", "device=cpu")
    assert again.exit_code == 2 and "already exists" in again.output
