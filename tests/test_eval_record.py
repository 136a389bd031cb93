"""`compress eval --out`: the evaluation written as a job's record (report.json, validated against the schema as
the suite writes it), one eval stage per model, dense vs sparse as before/after, gates as for any job."""
import json
import math

from typer.testing import CliRunner

from compress.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def evaluate(model, text_file, *extra):
    return invoke("eval", model, "--text", text_file, "--max-tokens", 256, "--context", 64, "-q", *extra)


def test_eval_writes_a_record_with_one_stage_per_model(tiny_model_dir, text_file, tmp_path):
    from tests.conftest import save_tiny_model

    other = save_tiny_model(tmp_path / "other", seed=1)
    out = tmp_path / "record"
    result = evaluate(tiny_model_dir, text_file, other, "--out", out, "--gate", "eval1.ppl<=1e9", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["results"]
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "eval" and [s["name"] for s in report["stages"]] == ["eval0", "eval1"]
    for stage, row in zip(report["stages"], rows):
        assert stage["result"]["after"]["perplexity"] == row["perplexity"] == report["metrics"][f"{stage['name']}.ppl"]
        assert math.isclose(row["perplexity"], math.exp(row["nll"]), rel_tol=1e-9)
    assert report["metrics"]["ppl"] == rows[1]["perplexity"]  # unqualified: the last
    assert len(report["inputs"]["models"]) == 2 and report["inputs"]["models"][0] == report["inputs"]["model"]
    assert all(d["tokens"] == 256 for d in report["inputs"]["evaluation"])
    assert report["gates"][0]["passed"] and (out / "compression.json").is_file()


def test_double_sparsity_gate_breach_exits_3_with_the_record_written(tiny_model_dir, text_file, tmp_path):
    channels = tmp_path / "channels.json"
    made = invoke("attention", "calibrate", tiny_model_dir, "--text", text_file, "--nsamples", 1, "--seqlen", 16,
                  "--device", "cpu", "--out", channels, "-q")
    assert made.exit_code == 0, made.output
    out = tmp_path / "record"
    result = evaluate(tiny_model_dir, text_file, "--double-sparsity", channels, "--tokens", "8", "--dense-layers", 0,
                      "--out", out, "--gate", "ppl_ratio<=0.5")
    assert result.exit_code == 3, result.output
    assert result.stderr.strip().startswith("error: gate breached: ppl_ratio ")
    report = json.loads((out / "report.json").read_text())
    stage = report["stages"][0]["result"]
    assert report["metrics"]["ppl_ratio"] == stage["after"]["perplexity"] / stage["before"]["perplexity"]
    assert "(dense)" in stage["before"]["model"] and not report["gates_passed"]


def test_record_options_are_checked_before_any_work(tiny_model_dir, text_file, tmp_path):
    for extra, needle in [(["--gate", "ppl<=3"], "--gate goes with --out"),
                          (["--out", tmp_path / "r", "--gate", "speedup>=1.2"], "does not measure 'speedup'"),
                          (["--out", tmp_path / "r", "--gate", "ppl_ratio<=1.2"], "does not measure 'ppl_ratio'"),
                          (["--out", text_file], "not a directory")]:
        result = evaluate(tiny_model_dir, text_file, *extra)
        assert result.exit_code == 2 and needle in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "r").exists()
