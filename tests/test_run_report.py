"""report.json and quality gates: the schema is current and every report the tests write validates against it
(conftest turns validation on); digests and provenance recomputed independently; a breached gate exits 3 with
one line per breach while the outputs and report are still written; the same recipe twice gives the same
metrics bit for bit."""
import hashlib
import json
import subprocess
from pathlib import Path

import jsonschema
import pytest
from typer.testing import CliRunner

from compress.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def prune_args(model, text_file, out, *extra):
    return ["prune", model, "--text", text_file, "--nsamples", 2, "--seqlen", 32, "--eval", "--eval-text", text_file,
            "--eval-tokens", 256, "--eval-context", 64, "--out", out, "-q", *extra]


def test_the_committed_schema_is_current():
    from compress.pipeline.report_schema import SCHEMA_PATH, build_schema

    assert json.loads(SCHEMA_PATH.read_text()) == json.loads(json.dumps(build_schema())), \
        "run python -m compress.pipeline.report_schema"


def test_report_of_a_prune_job(tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "out"
    result = invoke(*prune_args(tiny_model_dir, text_file, out, "--gate", "ppl_ratio<=1000"))
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    schema = json.loads((ROOT / "compress" / "schemas" / "report-v1.schema.json").read_text())
    jsonschema.validate(report, schema)
    broken = {**report, "stages": [{**report["stages"][0], "result": {**report["stages"][0]["result"], "layers": 3}}]}
    with pytest.raises(jsonschema.ValidationError):  # the per-kind result schemas apply
        jsonschema.validate(broken, schema)

    files = sorted(p for p in Path(tiny_model_dir).rglob("*") if p.is_file() and not p.name.startswith("."))
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(tiny_model_dir)).encode() + b"\0" + file.read_bytes())
    assert report["inputs"]["model"]["sha256"] == digest.hexdigest()
    assert report["inputs"]["model"]["bytes"] == sum(f.stat().st_size for f in files)

    prune, evaluation = report["stages"][0], report["stages"][1]
    assert [s["kind"] for s in report["stages"]] == ["prune", "eval", "export"]
    assert all(s["seconds"] >= 0 for s in report["stages"]) and report["seconds_total"] >= sum(
        s["seconds"] for s in report["stages"]) - 1e-3
    assert len(prune["result"]["layers"]) == 2  # the tiny model's decoder layers, each with its statistics
    after, before = evaluation["result"]["after"]["perplexity"], evaluation["result"]["before"]["perplexity"]
    assert report["metrics"]["ppl_ratio"] == after / before == report["metrics"]["eval.ppl_ratio"]
    assert report["gates"] == [{"metric": "ppl_ratio", "op": "<=", "limit": 1000.0,
                                "measured": after / before, "passed": True}] and report["gates_passed"]
    assert report["seed"] == 0 and report["schema_version"] == 1 and report["kind"] == "run"
    assert report["recipe"]["gates"] == ["ppl_ratio<=1000.0"]
    assert report["inputs"]["calibration"]["tokens"] == 2 * 32
    assert report["inputs"]["evaluation"][0]["tokens"] == 256


def test_provenance_says_dirty_or_clean_truthfully(monkeypatch, tmp_path):
    from compress.pipeline import run_report

    found = run_report.provenance()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain", "--", "compress"], cwd=ROOT, capture_output=True,
                            text=True).stdout
    assert found.commit == head and found.state == ("dirty" if status.strip() else "clean")
    monkeypatch.setattr("compress.provenance.code_root", lambda: tmp_path)  # an installed copy: no checkout
    assert run_report.provenance().state == "unknown" and run_report.provenance().commit is None


def test_breached_gate_exits_3_and_still_writes_everything(tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "out"
    result = invoke(*prune_args(tiny_model_dir, text_file, out, "--gate", "ppl_ratio<=0.5", "--gate", "ppl<=1e9",
                                "--gate", "ppl_before>1"))
    assert result.exit_code == 3, result.output
    lines = result.stderr.strip().splitlines()  # the report's table is on stdout
    assert len(lines) == 1 and lines[0].startswith("error: gate breached: ppl_ratio ") and "limit <= 0.5" in lines[0]
    assert "gate ppl_ratio <= 0.5: " in result.stdout and result.stdout.count("BREACHED") == 1
    report = json.loads((out / "report.json").read_text())
    assert not report["gates_passed"] and [g["passed"] for g in report["gates"]] == [False, True, True]
    assert (out / "model.safetensors").is_file() and (out / "compression.json").is_file()


def test_gate_on_a_metric_the_job_does_not_measure_is_refused_before_any_work(tiny_model_dir, text_file, tmp_path):
    out = tmp_path / "out"
    for gate, needle in [("accuracy>=0.4", "does not measure 'accuracy'"), ("ppl<=abc", "not a number"),
                         ("ppl=3", "METRIC<=LIMIT"), ("ppl<=inf", "finite")]:
        result = invoke(*prune_args(tiny_model_dir, text_file, out, "--gate", gate))
        assert result.exit_code == 2 and needle in result.output and "--gate" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_same_recipe_twice_gives_the_same_metrics_bit_for_bit(tiny_model_dir, text_file, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {tiny_model_dir}\ncalibrate: {{text: {text_file}, nsamples: 2, seqlen: 32}}\n"
                      f"stages:\n  - prune: {{method: sparsegpt, pattern: '2:4'}}\n"
                      f"  - eval: {{text: {text_file}, tokens: 256, context: 64}}\n"
                      f"gates: [ppl_ratio<=1000]\n")
    reports = []
    for name in ("a", "b"):
        assert invoke("run", recipe, "--out", tmp_path / name, "-q").exit_code == 0
        reports.append(json.loads((tmp_path / name / "report.json").read_text()))
    a, b = reports
    assert a["metrics"] == b["metrics"] and a["inputs"] == b["inputs"] and a["gates"] == b["gates"]
    def strip(layers):  # everything but the timings
        return [{**{k: v for k, v in layer.items() if k not in ("seconds", "info")},
                 "info": {k: v for k, v in layer["info"].items() if k != "phase_seconds"}} for layer in layers]

    assert strip(a["stages"][0]["result"]["layers"]) == strip(b["stages"][0]["result"]["layers"])
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def test_a_failure_after_the_export_leaves_no_output(tiny_model_dir, text_file, tmp_path, monkeypatch):
    def fail(folder, report):
        raise RuntimeError("disk full")

    monkeypatch.setattr("compress.pipeline.run_report.write_run_report", fail)
    out = tmp_path / "out"
    result = invoke(*prune_args(tiny_model_dir, text_file, out))
    assert result.exit_code == 1 and "disk full" in result.output
    # no output; the finished layers' checkpoints stay for --resume (a failure that is not bad input)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.partial"]


def test_progress_without_a_terminal_is_plain_timestamped_lines(tiny_model_dir, text_file, tmp_path):
    import re
    import sys

    args = [str(a) for a in prune_args(tiny_model_dir, text_file, tmp_path / "out")][:-1]  # without -q
    done = subprocess.run([sys.executable, "-c", "from compress.cli.entry import main; main()", *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "\x1b" not in done.stderr and "\r" not in done.stderr
    assert len(lines) >= 5 and all(re.match(r"\d\d:\d\d:\d\d \S", line) for line in lines), lines
    assert sum(bool(re.search(r"\(\d/2\) model\.layers\.\d", line)) for line in lines) == 2  # one line per layer
