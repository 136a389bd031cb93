"""The CPU install has no Triton: every command that promises a PyTorch path runs without it, and GPU-only
commands refuse with one line. Each run is a subprocess in which importing triton fails, so this holds on
machines where triton is installed too."""
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from compress.cli import app

WITHOUT_TRITON = """
import sys

class NoTriton:
    def find_spec(self, name, path=None, target=None):
        if name == "triton" or name.startswith("triton."):
            raise ImportError("No module named 'triton' (blocked by the test)")

sys.meta_path.insert(0, NoTriton())
from compress.cli.entry import main
main(sys.argv[1:])
"""


def compress_without_triton(*args):
    return subprocess.run([sys.executable, "-c", WITHOUT_TRITON, *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def channel_file(tiny_model_dir, text_file, tmp_path_factory):
    path = tmp_path_factory.mktemp("channels") / "channels.json"
    result = CliRunner().invoke(app, ["attention", "calibrate", str(tiny_model_dir), "--out", str(path), "--text",
                                      str(text_file), "--nsamples", "2", "--seqlen", "64", "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    return path


def test_attention_generate_runs_the_pytorch_path_without_triton(tiny_model_dir, channel_file):
    result = compress_without_triton("attention", "generate", tiny_model_dir, "--double-sparsity", channel_file,
                                     "--prompt", "It is a truth universally acknowledged", "--new-tokens", 4,
                                     "--tokens", 4, "--dense-layers", 1, "--device", "cpu")  # the tiny model has 2
    assert result.returncode == 0, result.stderr
    assert "PyTorch decode steps" in result.stdout and "triton" not in result.stderr.lower()


def test_eval_double_sparsity_runs_without_triton(tiny_model_dir, channel_file, text_file):
    result = compress_without_triton("eval", tiny_model_dir, "--double-sparsity", channel_file, "--text", text_file,
                                     "--context", 64, "--max-tokens", 256, "--dense-layers", 1, "--device", "cpu",
                                     "--json", "-q")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", [["bench", "kernels"], ["bench", "attention"]])
def test_gpu_benchmarks_refuse_in_one_line_without_triton(command):
    result = compress_without_triton(*command)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
