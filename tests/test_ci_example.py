"""examples/ci/: the shell script other CI systems call runs a recipe, writes the outputs and both reports, and
exits 0 / 3 (gate breached, reports still written) / 2 (bad input); the GitHub Actions workflow calls it and
uploads the reports whatever the outcome."""
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "ci" / "compress-job.sh"


def job(tmp_path, *args):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)


def test_script_passes_breaches_and_refuses(tiny_model_dir, text_file, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model: {tiny_model_dir}\ncalibrate: {{text: {text_file}, nsamples: 2, seqlen: 32}}\n"
                      f"stages:\n  - prune: {{method: wanda, pattern: '2:4'}}\n"
                      f"  - eval: {{text: {text_file}, tokens: 256, context: 64}}\ngates: [ppl_ratio<=1000]\n")
    done = job(tmp_path, recipe, "passed", "-q")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "passed" / "report.json").read_text())["gates_passed"]
    assert (tmp_path / "passed.html").is_file()

    done = job(tmp_path, recipe, "breached", "-q", "--gate", "ppl_ratio<=0.5")
    assert done.returncode == 3, done.stderr
    assert "gate breached: ppl_ratio" in done.stderr
    report = json.loads((tmp_path / "breached" / "report.json").read_text())
    assert not report["gates_passed"] and (tmp_path / "breached.html").is_file()

    done = job(tmp_path, tmp_path / "missing.yaml", "never", "-q")
    assert done.returncode == 2 and not (tmp_path / "never").exists() and not (tmp_path / "never.html").exists()


def test_workflow_calls_the_script_and_always_uploads():
    workflow = yaml.safe_load((ROOT / "examples" / "ci" / "github-actions.yml").read_text())
    steps = workflow["jobs"]["compress"]["steps"]
    assert any("examples/ci/compress-job.sh" in step.get("run", "") for step in steps)
    upload = next(step for step in steps if step.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()" and "report.json" in upload["with"]["path"]
    assert True in workflow and "pull_request" in workflow[True]  # YAML 1.1 reads the key `on` as True
