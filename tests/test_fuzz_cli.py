"""Random strings and numbers at every CLI option: the answer is exit 0 or 2, never a traceback, and
nothing is left behind. Confined to tmp_path, with the hub offline (conftest)."""
import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from compress.cli import app

runner = CliRunner()

PRUNE_OPTIONS = ["--method", "--pattern", "--sparsity", "--targets", "--ignore", "--text", "--dataset", "--text-field",
                 "--nsamples", "--seqlen", "--seed", "--blocksize", "--damp", "--ria-alpha", "--calib-batch",
                 "--permute", "--perm-blocks", "--perm-steps", "--perm-block-size", "--dtype", "--device",
                 "--device-map", "--max-memory", "--offload-folder", "--out", "--export", "--eval-text",
                 "--eval-dataset", "--eval-context", "--eval-tokens"]
SET_KEYS = ["model", "dtype", "device", "out", "calibrate.nsamples", "calibrate.seqlen", "calibrate.seed",
            "calibrate.text", "prune.method", "prune.pattern", "prune.sparsity", "prune.targets", "prune.damp",
            "prune.permute", "prune.perm_blocks", "eval.context", "eval.tokens", "stages.0.ria_alpha", "nope.x",
            "prune.method.x", "calibrate.seed.x"]
SPECIAL = ["nan", "-nan", "inf", "-inf", "1e309", "-1", "0", "0.0", "1", "2:4", "0:4", "4:2", "6:8", "3:7",
           "[/x]", "[bold]x[/bold]", "[red]", "'", '"', "\\", "(", "*", "", " ", "é[ü]", "💥", "-", "--", "="]
text = st.text(alphabet=string.printable + "[]/'\"éü💥\u202e", max_size=24)
numbers = st.one_of(st.integers(-10**12, 10**12).map(str),
                    st.floats(allow_nan=True, allow_infinity=True).map(repr))
values = st.one_of(st.sampled_from(SPECIAL), text, numbers)
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def check(result, tmp_path, before):
    output = result.output
    assert result.exit_code in (0, 2), (result.exit_code, output, result.exception)
    assert "Traceback" not in output
    if result.exit_code == 2:
        assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing left behind


@FUZZ
@given(option=st.sampled_from(PRUNE_OPTIONS), value=values)
def test_prune_options(option, value, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(app, ["prune", str(tiny_model_dir), option, value, "--dry-run"])
    check(result, tmp_path, before)


@FUZZ
@given(key=st.sampled_from(SET_KEYS), value=values, model=st.one_of(st.none(), text))
def test_run_overrides(key, value, model, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    if not recipe.exists():
        recipe.write_text("calibrate: {}\nstages:\n  - prune: {method: wanda}\n  - eval: {}\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    args = ["run", str(recipe), str(tiny_model_dir) if model is None else model, "--set", f"{key}={value}", "--dry-run"]
    check(runner.invoke(app, args), tmp_path, before)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(["--context", "--max-tokens", "--text", "--dtype", "--device", "--text-field"]),
       value=values)
def test_eval_options(option, value, tiny_model_dir, text_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    args = ["eval", str(tiny_model_dir), "--text", str(text_file), "--context", "32", "--max-tokens", "64",
            "--device", "cpu", option, value, "--quiet"]
    check(runner.invoke(app, args), tmp_path, before)
