"""Loading causal LMs from a directory, a .gguf file or the hub, and choosing dtype and device."""
from __future__ import annotations

import os
import re
from pathlib import Path

from compress.errors import BadInput

__all__ = ["load_model", "resolve_dtype", "resolve_device", "checkpoint_dtype", "is_compressed_export", "looks_like_hub_id"]

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def resolve_dtype(name: str, device: str, config=None):
    """The torch dtype to load in. 'auto': float32 on the CPU (half precision is slow there); on a GPU the
    dtype the checkpoint records (`config.dtype`, older `torch_dtype`), bfloat16 where it records none or
    `config` is None (a .gguf). float16 only ever comes from the checkpoint: it overflows in some families."""
    import torch

    if name == "auto":
        return torch.float32 if device == "cpu" else checkpoint_dtype(config)
    if name not in DTYPES:
        raise BadInput(f"unknown dtype {name!r}: choose auto, float32, bfloat16 or float16")
    return getattr(torch, DTYPES[name])


def checkpoint_dtype(config):
    """The float dtype a model config records, bfloat16 where it records none (or one we do not load in)."""
    import torch

    recorded = None
    if config is not None:
        recorded = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(recorded, str):
        recorded = getattr(torch, DTYPES.get(recorded, recorded), None)
    return recorded if recorded in (torch.float32, torch.bfloat16, torch.float16) else torch.bfloat16


def is_compressed_export(path: Path) -> bool:
    """A directory written by the compressed export (compress/export/compressed.py) or the factorized
    checkpoint of a family without a stock MoE (compress/factorize/checkpoint.py): `compress.load` reads both."""
    return path.is_dir() and any((path / name).is_file() for name in ("compressed.safetensors", "factorized.safetensors"))


def _auto_config(where: str, kwargs: dict):
    """The config that decides `--dtype auto` on a GPU: None for a .gguf (bfloat16)."""
    if "gguf_file" in kwargs:
        return None
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(where, trust_remote_code=kwargs.get("trust_remote_code", False))


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda was asked for, but no CUDA GPU is visible")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise BadInput(f"unknown device {name!r}: choose auto, cuda or cpu")
    return name


def looks_like_hub_id(source: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+/[\w.-]+", source)) and not source.startswith(".")


def _hub_reachable(timeout: float = 3.0) -> bool:
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _go_offline() -> None:
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True


def load_model(source: str | None, dtype="auto", device: str = "cpu", trust_remote_code: bool = False,
               device_map=None):
    """Load (model, tokenizer, resolved source) on the CPU in `dtype`; the caller streams layers to a GPU.

    `source` is a local HF directory, a .gguf file, a hub id, or None for the default model.
    `device_map` (a compress.model.placement.DeviceMap) spreads the model over GPUs, CPU memory and disk
    with accelerate instead; the engine and the evaluation then keep that placement.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source is None:
        from compress.defaults.assets import default_model_dir

        source = str(default_model_dir())
    torch_dtype = resolve_dtype(dtype, device) if isinstance(dtype, str) else dtype  # checks the name early
    from_checkpoint = dtype == "auto" and device != "cpu"
    path = Path(source)
    kwargs: dict = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    placement = device_map.load_kwargs() if device_map is not None else {}
    if path.is_file() and path.suffix == ".gguf":
        where, kwargs["gguf_file"] = str(path.parent), path.name
    elif is_compressed_export(path):
        raise BadInput(f"{source}: a compressed export; load it with compress.load() (compress eval and run do)")
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise BadInput(f"{source}: not a Hugging Face model directory (no config.json)")
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise BadInput(f"{source}: no weights found (*.safetensors or *.bin)")
        where = str(path)
    elif path.exists():
        raise BadInput(f"{source}: expected a model directory or a .gguf file")
    elif looks_like_hub_id(source):
        where = source
        os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
        os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
        if not _hub_reachable():
            _go_offline()  # only the local hub cache can answer; fail fast, no retries
    else:
        raise BadInput(f"{source}: no such file or directory")
    try:
        if from_checkpoint:
            kwargs["dtype"] = resolve_dtype(dtype, device, _auto_config(where, kwargs))
        # Weights come from safetensors or weights-only torch.load; remote code runs only if asked.
        model = AutoModelForCausalLM.from_pretrained(where, low_cpu_mem_usage=True, **kwargs, **placement)
        tokenizer = AutoTokenizer.from_pretrained(
            where, **{k: v for k, v in kwargs.items() if k in ("gguf_file", "trust_remote_code")}
        )
    except Exception as exc:  # loaders raise many types; each means this input cannot be used
        if type(exc).__name__ == "UnpicklingError" and path.is_dir():
            raise BadInput(_pickle_refusal(path, str(exc))) from exc
        text = _ANSI.sub("", str(exc)).strip()
        first_line = text.splitlines()[0] if text else type(exc).__name__
        if where == source and looks_like_hub_id(source) and not path.exists():
            raise BadInput(f"could not fetch {source!r} from the Hugging Face hub ({first_line[:200]}); "
                           "download it elsewhere and pass the local directory") from exc
        raise BadInput(f"could not load model from {source}: {first_line[:300]}") from exc
    model.eval()
    model.config.use_cache = False
    return model, tokenizer, source


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _pickle_refusal(folder: Path, message: str) -> str:
    """One plain line for a .bin checkpoint that weights-only torch.load refuses (torch's own message is a
    page of advice with terminal escape codes)."""
    files = sorted(folder.glob("*.bin"))
    where = str(files[0]) if len(files) == 1 else f"{folder}/*.bin"
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", _ANSI.sub("", message), re.S)
    why = " ".join(found.group(1).split()) if found else "it holds more than tensors"
    return (f"{where}: refused: a pickle that weights-only torch.load cannot read ({why}); compress never runs "
            "code from a checkpoint: convert it to safetensors where you trust its source")
