"""Crash-safe resume (compress.pipeline.resume, compress.prune.checkpoint) on a tiny 4-layer Llama.

A run is killed with SIGKILL right after layer 1 is checkpointed (COMPRESS_TEST_KILL_AFTER_LAYER, in a child
process); `--resume` then finishes it. The output must equal an uninterrupted run's bit for bit, and the
resumed run must calibrate only layers 2 and 3 (counted by wrapping the collectors the prune loop attaches,
once per layer it prunes). A resume whose model, data, recipe or versions differ, a second run on a locked
output and a work folder someone else made are each refused with one line, exit 2, nothing changed.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from compress.prune import apply
from compress.prune.checkpoint import KILL_AFTER_LAYER
from tests.conftest import TEXT, save_tiny_model

ANSI = "\x1b["
LAYERS = 4
KILLED_AFTER = 1
RECORDS = ("compression.json", "report.json", "recipe.yaml")  # timings and the out path differ by design


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("resume")
    model = save_tiny_model(root / "tiny-llama", num_hidden_layers=LAYERS)
    text = root / "text.txt"
    text.write_text(TEXT)
    recipe = root / "recipe.yaml"
    recipe.write_text(f"calibrate: {{text: '{text}', nsamples: 4, seqlen: 32}}\n"
                      "stages:\n"
                      "  - prune: {method: sparsegpt, pattern: '2:4', permute: heuristic}\n"
                      f"  - eval: {{text: '{text}', context: 32, tokens: 256}}\n")
    return {"root": root, "model": str(model), "text": str(text), "recipe": str(recipe)}


def job(world: dict, case: str) -> list[str]:
    if case == "prune":
        return ["prune", world["model"], "--text", world["text"], "--nsamples", "4", "--seqlen", "32"]
    return ["run", world["recipe"], world["model"]]  # sparsegpt with permutations, then perplexity


def child(argv: list[str], kill_after: int | None = None) -> subprocess.CompletedProcess:
    """The `compress` console entry in a child process (stderr is a pipe: no TTY)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop(KILL_AFTER_LAYER, None)
    if kill_after is not None:
        env[KILL_AFTER_LAYER] = str(kill_after)
    return subprocess.run([sys.executable, "-c", "from compress.cli.entry import main; main()", *argv],
                          capture_output=True, text=True, env=env, timeout=600)


def invoke(argv: list[str]) -> tuple[int, str, str]:
    """The console entry in this process: (exit code, stdout, stderr)."""
    from compress.cli.entry import main

    stdout, stderr = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0
    return code, stdout.getvalue(), stderr.getvalue()


@pytest.fixture
def calibrated_layers(monkeypatch) -> list[str]:
    """The decoder layers the prune loop calibrates (it attaches collectors once per layer it prunes)."""
    seen: list[str] = []
    original = apply.collect_inputs

    @contextlib.contextmanager
    def recording(linears, kind):
        seen.append(next(iter(linears)).rsplit(".", 2)[0])  # model.layers.N.self_attn.q_proj -> model.layers.N
        with original(linears, kind) as collectors:
            yield collectors

    monkeypatch.setattr(apply, "collect_inputs", recording)
    return seen


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def layer_rows(out: Path) -> list[dict]:
    """The per-layer report rows without what a resume changes by design (timings, the resumed mark)."""
    stage = json.loads((out / "compression.json").read_text())["stages"][0]["result"]
    rows = []
    for row in stage["layers"]:
        info = {k: v for k, v in row["info"].items() if k not in ("phase_seconds", "resumed")}
        rows.append({**{k: v for k, v in row.items() if k not in ("seconds", "info")}, "info": info})
    return rows + [stage["linears"], stage["permutation_sites"]]


def killed_run(world: dict, case: str, out: Path) -> Path:
    """Run the job with --out `out`, killed right after layer KILLED_AFTER is checkpointed; its work folder."""
    killed = child(job(world, case) + ["--out", str(out)], kill_after=KILLED_AFTER)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert ANSI not in killed.stderr and "loading" in killed.stderr  # progress lines, plain without a TTY
    work = out.with_name(out.name + ".partial")
    assert not out.exists() and work.is_dir()
    return work


@pytest.mark.parametrize("case", ["prune", "run"])
def test_a_killed_run_resumes_to_the_uninterrupted_output(world, case, tmp_path, calibrated_layers):
    full = tmp_path / "full"
    code, _, stderr = invoke(job(world, case) + ["--out", str(full), "-q"])  # in this process, as the resume
    assert code == 0, stderr
    calibrated_layers.clear()
    out = tmp_path / "resumed"
    work = killed_run(world, case, out)
    stage = work / "stage-0-prune"
    # a write the kill cut short, and a layer file beyond the saved progress: a resume must use neither
    (stage / ".layer-00002.safetensors.tmp").write_bytes(b"torn")
    (stage / "layer-00002.safetensors").write_bytes(b"not a checkpoint")

    code, _, stderr = invoke(job(world, case) + ["--out", str(out)])
    assert code == 2 and stderr.count("\n") == 1 and "--resume" in stderr and "2 of 4 layers" in stderr, stderr
    assert calibrated_layers == [] and not out.exists()

    code, _, stderr = invoke(job(world, case) + ["--out", str(out), "--resume"])
    assert code == 0, stderr
    assert ANSI not in stderr and "resuming from" in stderr
    assert sorted(set(calibrated_layers)) == [f"model.layers.{i}" for i in range(KILLED_AFTER + 1, LAYERS)]
    assert not work.exists()
    ours, reference = tree(out), tree(full)
    assert sorted(ours) == sorted(reference)
    for name in reference:
        if name not in RECORDS:
            assert ours[name] == reference[name], f"{name} differs from the uninterrupted run's"
    assert ("permutations.safetensors" in reference) == (case == "run")
    assert layer_rows(out) == layer_rows(full)
    resumed = json.loads((out / "compression.json").read_text())["stages"][0]["result"]["layers"]
    assert [row["info"].get("resumed", False) for row in resumed] == [True, True, False, False]
    if case == "run":
        evals = [json.loads((d / "compression.json").read_text())["stages"][1]["result"] for d in (out, full)]
        for when in ("before", "after"):
            assert {k: v for k, v in evals[0][when].items() if k != "seconds"} == \
                {k: v for k, v in evals[1][when].items() if k != "seconds"}


@pytest.fixture(scope="module")
def killed_work(world, tmp_path_factory) -> Path:
    return killed_run(world, "prune", tmp_path_factory.mktemp("killed") / "out")


def copy_of(work: Path, where: Path) -> Path:
    """The killed run's work folder copied beside another out (the fingerprint leaves the out path aside)."""
    shutil.copytree(work, where / "out.partial")
    return where / "out"


@pytest.mark.parametrize("change, named", [
    (["--seed", "1"], "the recipe differs at calibrate.seed (was 0, now 1)"),
    (["--nsamples", "8"], "the recipe differs at calibrate.nsamples (was 4, now 8)"),
    (["--pattern", "4:8"], 'the recipe differs at stages.0.prune.pattern (was "2:4", now "4:8")'),
    (["--method", "sparsegpt"], 'stages.0.prune.method (was "wanda", now "sparsegpt")'),
    ("other model", "the model differs (sha256 was"),
    ("other torch", "the versions differ: torch was"),
])
def test_a_resume_that_differs_is_refused_naming_what(world, killed_work, change, named, tmp_path, monkeypatch,
                                                     calibrated_layers):
    from compress.pipeline.session import Session

    out = copy_of(killed_work, tmp_path)
    argv = job(world, "prune") + ["--out", str(out), "--resume", "-q"]
    loads = []
    real_load = Session._load
    monkeypatch.setattr(Session, "_load", lambda self: (loads.append(1), real_load(self))[1])
    if change == "other model":
        argv[1] = str(save_tiny_model(tmp_path / "other", seed=1, num_hidden_layers=LAYERS))
    elif change == "other torch":
        import compress.provenance

        real = compress.provenance.versions
        monkeypatch.setattr(compress.provenance, "versions", lambda: {**real(), "torch": "0.0.1"})
    else:
        argv += change
    checkpoints = lambda: {k: v for k, v in tree(out.with_name("out.partial")).items() if k != "lock"}  # noqa: E731
    before = checkpoints()  # the lock file names its latest holder, this run too
    code, stdout, stderr = invoke(argv)
    assert code == 2 and stdout == "" and stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
    assert named in stderr and "--force" in stderr, stderr
    assert checkpoints() == before and not out.exists()
    assert calibrated_layers == []
    assert bool(loads) == (change == "other model")  # the rest is refused before the model is loaded


def test_force_starts_over_and_resume_without_checkpoints_starts_fresh(world, killed_work, tmp_path,
                                                                     calibrated_layers):
    out = copy_of(killed_work, tmp_path)
    code, _, stderr = invoke(job(world, "prune") + ["--out", str(out), "--force", "-q"])
    assert code == 0, stderr
    assert sorted(set(calibrated_layers)) == [f"model.layers.{i}" for i in range(LAYERS)]
    assert out.is_dir() and not out.with_name("out.partial").exists()
    fresh = tmp_path / "fresh"
    code, _, stderr = invoke(job(world, "prune") + ["--out", str(fresh), "--resume"])
    assert code == 0 and "nothing to resume" in stderr, stderr
    assert tree(fresh)["model.safetensors"] == tree(out)["model.safetensors"]


def test_a_second_run_on_a_locked_output_is_refused_naming_the_holder(world, tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-c", "from compress.cli.entry import main; main()",
                              *job(world, "prune"), "--out", str(out), "-q"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lock = tmp_path / "out.partial" / "lock"
    try:
        deadline = time.monotonic() + 120
        while not (lock.is_file() and f"pid {first.pid} " in lock.read_text()):
            assert first.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.005)
        first.send_signal(signal.SIGSTOP)  # holding the lock, wherever it is
        before = tree(tmp_path)
        code, stdout, stderr = invoke(job(world, "prune") + ["--out", str(out), "--force"])
        assert code == 2 and stdout == "" and stderr.count("\n") == 1, stderr
        assert "another compress run is writing" in stderr and f"pid {first.pid} on" in stderr, stderr
        assert str(lock) in stderr and tree(tmp_path) == before
    finally:
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert out.is_dir() and not lock.parent.exists()


def test_a_work_folder_someone_else_made_is_left_alone(world, tmp_path):
    out = tmp_path / "out"
    theirs = tmp_path / "out.partial"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    code, _, stderr = invoke(job(world, "prune") + ["--out", str(out), "--force"])
    assert code == 2 and stderr.count("\n") == 1 and "not a work folder compress made" in stderr, stderr
    assert tree(theirs) == {"notes.txt": b"mine"} and not out.exists()


def test_resume_needs_an_output(world):
    code, _, stderr = invoke(job(world, "prune") + ["--resume"])
    assert code == 2 and "--resume does not apply: there is no --out" in stderr, stderr
    code, _, stderr = invoke(job(world, "run") + ["--resume"])
    assert code == 2 and "--resume needs an output directory" in stderr, stderr
