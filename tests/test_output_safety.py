"""Output safety: --force replaces only what carries this tool's marker; a multi-stage job publishes its side
outputs only when it completes; an unwritable output is refused before any model loads; outputs get the
modes a plain mkdir/open gives under the umask."""
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compress.cli import app

runner = CliRunner()
DATA = Path(__file__).parent / "data"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def calibrate(model, text_file):
    return ["attention", "calibrate", model, "--text", text_file, "--nsamples", 1, "--seqlen", 16, "--device", "cpu",
            "-q"]


def refused(result, needle=""):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and needle in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


# -- 1. "ours" is decided by this tool's marker -------------------------------------------------------------------
def test_force_never_replaces_a_file_another_program_wrote(tiny_model_dir, text_file, tmp_path):
    from safetensors.torch import save_file
    import torch

    mine = tmp_path / "ch.json"
    assert invoke(*calibrate(tiny_model_dir, text_file), "--out", mine, "--projection").exit_code == 0
    again = invoke(*calibrate(tiny_model_dir, text_file), "--out", mine, "--projection", "--force")
    assert again.exit_code == 0, again.output  # what this tool wrote, it replaces
    stripped = json.loads(mine.read_text())
    stripped["compress"] = {k: v for k, v in stripped["compress"].items() if k in ("format", "mode", "model")}
    foreign = {
        "user.json": json.dumps({"compress": {"notes": "mine"}}),  # a top-level "compress" key is not a marker
        "copy.json": json.dumps(stripped),  # a channel file's layout without the marker either
    }
    for name, text in foreign.items():
        (tmp_path / name).write_text(text)
        refused(invoke(*calibrate(tiny_model_dir, text_file), "--out", tmp_path / name, "--force"), name)
        assert (tmp_path / name).read_text() == text
    # a projection file beside it that merely has the metadata this tool once recognised
    (tmp_path / "other.json").write_text("{}")
    beside = tmp_path / "new.projection.safetensors"
    save_file({"x": torch.zeros(2)}, str(beside), metadata={"compress": "projection"})
    before = beside.read_bytes()
    refused(invoke(*calibrate(tiny_model_dir, text_file), "--out", tmp_path / "new.json", "--projection", "--force"),
            "new.projection.safetensors")
    assert beside.read_bytes() == before and not (tmp_path / "new.json").exists()


def test_force_never_replaces_a_folder_another_program_wrote(tiny_model_dir, text_file, tmp_path):
    folder = tmp_path / "theirs"
    folder.mkdir()
    (folder / "compression.json").write_text('{"method": "theirs"}')  # a file of that name is not a marker
    (folder / "weights.bin").write_bytes(b"precious")
    before = snapshot(folder)
    for args in (["prune", tiny_model_dir, "--method", "magnitude", "--device", "cpu"],
                 ["factorize", tiny_model_dir, "--steps", 0, "--experts", 2, "--top-k", 1, "--device", "cpu"]):
        refused(invoke(*args, "--out", folder, "--force", "-q"), str(folder))
        assert snapshot(folder) == before


def test_every_directory_writer_marks_its_output_and_force_replaces_it(tiny_model_dir, text_file, tmp_path):
    runs = {
        "hf": ["prune", tiny_model_dir, "--method", "magnitude", "--device", "cpu"],
        "compressed": ["prune", tiny_model_dir, "--method", "magnitude", "--pattern", "2:4", "--export", "compressed",
                       "--device", "cpu"],
        "moe": ["factorize", tiny_model_dir, "--steps", 0, "--experts", 2, "--top-k", 1, "--device", "cpu"],
    }
    for name, args in runs.items():
        out = tmp_path / name
        assert invoke(*args, "--out", out, "-q").exit_code == 0
        (out / "stale.txt").write_text("from the first run")
        result = invoke(*args, "--out", out, "--force", "-q")
        assert result.exit_code == 0, (name, result.output)
        assert not (out / "stale.txt").exists()


def test_graph_outputs_are_marked_and_foreign_ones_refused(tmp_path):
    pytest.importorskip("torch_geometric")
    pytest.importorskip("grakel")
    train = ["graph", "train", "--data", "mutag", "--epochs", 1, "--channels", 8, "--layers", 1, "--heads", 1,
             "--device", "cpu", "-q"]
    out = tmp_path / "gps"
    assert invoke(*train, "--out", out).exit_code == 0
    assert invoke(*train, "--out", out, "--force").exit_code == 0
    foreign = tmp_path / "foreign"
    shutil.copytree(out, foreign)
    manifest = json.loads((foreign / "compression.json").read_text())
    (foreign / "compression.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "written_by"}))
    before = snapshot(foreign)
    refused(invoke(*train, "--out", foreign, "--force"), str(foreign))
    refused(invoke("graph", "prune", out, "--heads", 0.5, "--device", "cpu", "-q", "--out", foreign, "--force"),
            str(foreign))
    assert snapshot(foreign) == before


# -- 2. a multi-stage job publishes nothing unless it completes -----------------------------------------------------
def test_a_recipe_that_fails_after_its_attention_stage_leaves_nothing(tiny_model_dir, text_file, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("Too short to measure.")
    recipe = tmp_path / "r.yaml"
    channels, out = tmp_path / "ch.json", tmp_path / "out"
    recipe.write_text(f"calibrate: {{nsamples: 2, seqlen: 32, text: {text_file}}}\n"
                      f"stages:\n  - attention: {{channel_file: {channels}, projection: true}}\n"
                      f"  - eval: {{text: {short}, context: 64, before: false}}\n"
                      f"  - export: {{format: hf}}\nout: {out}\n")
    result = invoke("run", recipe, tiny_model_dir, "--quiet", "--set", "device=cpu")
    refused(result, "fewer than the context")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yaml", "short.txt"]
    # the same recipe on good input publishes the channel file, its projection and the output folder
    recipe.write_text(recipe.read_text().replace(str(short), str(text_file)))
    assert invoke("run", recipe, tiny_model_dir, "--quiet", "--set", "device=cpu").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ch.json", "ch.projection.safetensors", "out", "r.yaml",
                                                          "short.txt"]


# -- 3. outputs that cannot be written are refused during validation --------------------------------------------------
@pytest.fixture
def no_loading(monkeypatch):
    """Any model load fails the run as an internal error, so a refusal with exit 2 came before it."""
    import compress.model.loading

    def load_model(*args, **kwargs):
        raise RuntimeError("the model was loaded before the output was checked")

    monkeypatch.setattr(compress.model.loading, "load_model", load_model)


def unwritable_cases(tiny_model_dir, text_file, tmp_path, out: Path):
    recipe = tmp_path / "side.yaml"
    recipe.write_text(f"calibrate: {{nsamples: 1, seqlen: 16, text: {text_file}}}\n"
                      f"stages:\n  - attention: {{channel_file: {out / 'ch.json'}}}\n")
    (tmp_path / "ckpt").mkdir(exist_ok=True)
    cases = [
        ["prune", tiny_model_dir, "--method", "magnitude", "--device", "cpu", "--out", out],
        ["run", recipe, tiny_model_dir, "--set", "device=cpu", "--out", out],
        ["run", recipe, tiny_model_dir, "--set", "device=cpu"],  # the attention stage's channel file
        ["factorize", tiny_model_dir, "--steps", 0, "--experts", 2, "--top-k", 1, "--device", "cpu", "--out", out],
        [*calibrate(tiny_model_dir, text_file), "--out", out / "ch.json"],
        ["bench", "kernels", "--json", out / "k.json"],
        ["bench", "attention", "--json", out / "a.json"],
    ]
    try:
        import torch_geometric  # noqa: F401
        cases += [["graph", "train", "--data", "mutag", "--epochs", 1, "--device", "cpu", "--out", out],
                  ["graph", "prune", tmp_path / "ckpt", "--heads", 0.5, "--device", "cpu", "--out", out]]
    except ImportError:
        pass
    return cases


def check_refused_before_work(cases, tmp_path, needle):
    before = snapshot(tmp_path)
    for args in cases:
        refused(invoke(*args) if args[0] == "bench" or "-q" in args else invoke(*args, "-q"), needle)
        assert snapshot(tmp_path) == before, args


def test_an_output_under_a_regular_file_is_refused_before_loading(tiny_model_dir, text_file, tmp_path, no_loading):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    out = blocker / "x"
    check_refused_before_work(unwritable_cases(tiny_model_dir, text_file, tmp_path, out), tmp_path, str(blocker))
    assert blocker.read_text() == "a file, not a folder"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_an_output_where_nothing_can_be_created_is_refused_before_loading(tiny_model_dir, text_file, tmp_path,
                                                                       no_loading):
    """/proc takes no new entries, even from root: the check tries, it does not trust permission bits alone."""
    cases = unwritable_cases(tiny_model_dir, text_file, tmp_path, Path("/proc/compress-test-out"))
    cases = [[a if a != Path("/proc/compress-test-out") / "ch.json" else Path("/proc/compress-test-ch.json")
              for a in args] for args in cases]
    recipe = tmp_path / "side.yaml"
    recipe.write_text(recipe.read_text().replace("/proc/compress-test-out/ch.json", "/proc/compress-test-ch.json"))
    check_refused_before_work(cases, tmp_path, "/proc")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_an_output_in_a_read_only_folder_is_refused_before_loading(tiny_model_dir, text_file, tmp_path, no_loading):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        cases = unwritable_cases(tiny_model_dir, text_file, tmp_path, locked / "x")
        cases = [[locked / "ch.json" if a == locked / "x" / "ch.json" else a for a in args] for args in cases]
        recipe = tmp_path / "side.yaml"
        recipe.write_text(recipe.read_text().replace(str(locked / "x" / "ch.json"), str(locked / "ch.json")))
        check_refused_before_work(cases, tmp_path, str(locked))
    finally:
        locked.chmod(0o700)


# -- 4. modes follow the umask --------------------------------------------------------------------------------------
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_have_the_modes_the_umask_gives(umask, tiny_model_dir, text_file, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"calibrate: {{nsamples: 1, seqlen: 16, text: {text_file}}}\n"
                      f"stages:\n  - attention: {{channel_file: {tmp_path / 'staged.json'}, projection: true}}\n"
                      f"  - prune: {{method: magnitude, pattern: '2:4'}}\nout: {tmp_path / 'run'}\n")
    old = os.umask(umask)
    try:
        results = [
            invoke("prune", tiny_model_dir, "--method", "magnitude", "--device", "cpu", "--out", tmp_path / "pruned",
                   "-q"),
            invoke("prune", tiny_model_dir, "--method", "magnitude", "--device", "cpu", "--out", tmp_path / "pruned",
                   "--force", "-q"),
            invoke(*calibrate(tiny_model_dir, text_file), "--out", tmp_path / "ch.json", "--projection"),
            invoke("run", recipe, tiny_model_dir, "--set", "device=cpu", "-q"),
        ]
    finally:
        os.umask(old)
    assert all(r.exit_code == 0 for r in results), [r.output for r in results]
    outputs = [tmp_path / "pruned", tmp_path / "run", tmp_path / "ch.json", tmp_path / "ch.projection.safetensors",
               tmp_path / "staged.json", tmp_path / "staged.projection.safetensors"]
    for path in outputs:
        for p in [path, *path.rglob("*")]:
            expected = (0o777 if p.is_dir() else 0o666) & ~umask
            assert stat.S_IMODE(p.stat().st_mode) == expected, (p, oct(p.stat().st_mode))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_a_bench_report_replaces_only_a_report_compress_wrote(tmp_path):
    """`compress bench --json` (GPU) goes through these two: a user's file there is refused before any work,
    the report is written whole and marked, and a later run may replace it."""
    from compress.errors import BadInput
    from compress.export.outputs import check_report_file, write_report_file

    theirs = tmp_path / "theirs.json"
    theirs.write_text('{"rows": [1, 2], "compress": {"note": "a user file with our block name"}}')
    before = theirs.read_bytes()
    with pytest.raises(BadInput, match="not a report compress wrote"):
        check_report_file(theirs)
    assert theirs.read_bytes() == before
    ours = tmp_path / "bench.json"
    write_report_file(check_report_file(ours), {"rows": [{"ms": 1.5}]})
    assert json.loads(ours.read_text())["rows"] == [{"ms": 1.5}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "theirs.json"]  # no temporary left
    write_report_file(check_report_file(ours), {"rows": []})
    assert json.loads(ours.read_text())["rows"] == []
