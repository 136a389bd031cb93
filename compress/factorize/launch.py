"""Launch settings of the factorized FFN's Triton kernels and the token counts where one path hands over to the
next, per GPU name: measured by benchmarks/factorize_launch.py and stored in launch_settings.json beside this
file (`--store`). A GPU without an entry (or the CPU interpreter) gets the kernels' own defaults."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import torch

__all__ = ["TABLE", "DEFAULT_BOUNDS", "bounds", "decode_launch", "blocked_launch", "store"]

TABLE = Path(__file__).with_name("launch_settings.json")
# decode kernels up to `decode`, their few-token settings up to `few`; blocked kernels up to `blocked`, their
# small settings up to `small`; grouped matmuls beyond
DEFAULT_BOUNDS = {"few": 4, "decode": 16, "small": 1024, "blocked": 4096}


@functools.cache
def _stored() -> dict:
    return json.loads(TABLE.read_text()) if TABLE.exists() else {}


def _entry(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    return _stored().get(torch.cuda.get_device_name(device), {})


def bounds(device: torch.device) -> dict:
    return {**DEFAULT_BOUNDS, **_entry(device).get("bounds", {})}


def decode_launch(tokens: int, device: torch.device) -> dict:
    entry, few = _entry(device), tokens <= bounds(device)["few"]
    return entry.get("decode_few" if few else "decode_many", {} if few else {"split": 1})


def blocked_launch(tokens: int, device: torch.device) -> dict:
    return _entry(device).get("blocked_small" if tokens <= bounds(device)["small"] else "blocked_large", {})


def store(gpu: str, entry: dict) -> None:
    """Write one GPU's measured entry into the table (the others kept)."""
    table = json.loads(TABLE.read_text()) if TABLE.exists() else {}
    table[gpu] = entry
    TABLE.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")
    _stored.cache_clear()
