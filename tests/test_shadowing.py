"""No module of the project can stand in for an installed distribution's module or the standard library's.

A folder whose scripts a user runs by path (`python benchmarks/x.py`) becomes the first entry of sys.path,
and the repository root is on it whenever a command runs from there (`python -m pytest`, `python -m
benchmarks.render`): every module in those places can shadow a top-level module of the same name. This once
broke every model load: `benchmarks/kernels.py` stood in for Hugging Face's `kernels` package, which
transformers imports whenever it is installed.
"""
from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = "compress"  # the distribution this repository installs


def installed_top_level_names() -> dict[str, str]:
    """Every top-level module name of the environment's distributions (ours left out) and of the stdlib."""
    names = {name: "the standard library" for name in sys.stdlib_module_names}
    for name, dists in importlib.metadata.packages_distributions().items():
        others = sorted(set(dists) - {OURS})
        if others:
            names[name] = "distribution " + ", ".join(others)
    return names


def module_names(folder: Path) -> set[str]:
    """The names importable from `folder` when it is on sys.path: modules and regular packages."""
    names = {p.stem for p in folder.glob("*.py")}
    return names | {p.parent.name for p in folder.glob("*/__init__.py")}


def script_folders(root: Path) -> list[Path]:
    """The root, and every tracked-looking folder holding a script run by path (a `__main__` guard)."""
    folders = {root}
    for path in root.rglob("*.py"):
        if any(part.startswith(".") or part.endswith(".egg-info") for part in path.relative_to(root).parts):
            continue
        if '__name__ == "__main__"' in path.read_text(errors="replace"):
            folders.add(path.parent)
    return sorted(folders)


def shadowing(root: Path) -> list[str]:
    """'path shadows the top-level module NAME of WHOM' for every clash under `root`."""
    installed = installed_top_level_names()
    clashes = []
    for folder in script_folders(root):
        for name in sorted(module_names(folder) & set(installed)):
            where = (folder / name).relative_to(root)
            clashes.append(f"{where} shadows the top-level module {name!r} of {installed[name]}")
    return clashes


def test_no_project_module_shadows_an_installed_one():
    assert shadowing(ROOT) == []


def test_a_planted_module_named_like_a_distribution_is_found(tmp_path):
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    (bench / "__init__.py").write_text("")
    (bench / "run_me.py").write_text('if __name__ == "__main__":\n    pass\n')
    (bench / "transformers.py").write_text("")
    (bench / "json.py").write_text("")
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("")
    found = "\n".join(shadowing(tmp_path))
    assert "benchmarks/transformers shadows the top-level module 'transformers'" in found
    assert "benchmarks/json shadows the top-level module 'json' of the standard library" in found
    assert "torch shadows the top-level module 'torch'" in found


IMPORT_EVERYTHING = """
import importlib, json, sys
from pathlib import Path
root = Path.cwd().resolve()
for path in sorted((root / "benchmarks").glob("*.py")):
    if path.stem != "__init__":
        importlib.import_module("benchmarks." + path.stem)
import transformers
from transformers import LlamaConfig, LlamaForCausalLM
LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                             num_attention_heads=2, num_key_value_heads=1))
ours = {}
for name, module in list(sys.modules.items()):
    file = getattr(module, "__file__", None)
    if file and Path(file).is_absolute() and Path(file).resolve().is_relative_to(root):
        ours[name] = str(Path(file).resolve().relative_to(root))
print(json.dumps(ours))
"""


def test_the_benchmarks_import_as_a_user_runs_them_and_models_still_load():
    """From the repository root, as `python -m benchmarks.NAME` runs: every benchmark module imports, a model
    builds afterwards, and each file of ours in sys.modules sits under its own package name."""
    done = subprocess.run([sys.executable, "-c", IMPORT_EVERYTHING], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ours = json.loads(done.stdout.strip().splitlines()[-1])
    assert any(name.startswith("benchmarks.") for name in ours)
    for name, file in ours.items():
        dotted = file.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        assert name == dotted, f"{file} was imported as the top-level module {name!r}"
