"""How a model is loaded: dtype, device or device map, and whether checkpoint code may run."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import field_validator

from compress.config import StrictConfig

__all__ = ["LoadConfig"]

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class LoadConfig(StrictConfig):
    dtype: Literal["auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16"] = "auto"
    """auto: float32 on CPU; on a GPU the dtype the checkpoint records (bfloat16 if none)."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N. The model stays in CPU memory; one layer at a time moves to the GPU."""
    device_map: str | None = None
    """Spread the model with accelerate: auto | balanced | balanced_low_0 | sequential | a JSON file."""
    max_memory: str | None = None
    """Per-device limits for device_map, e.g. 0=70GiB,1=70GiB,cpu=200GiB."""
    offload_folder: str | None = None
    """Where weights a device map puts on disk go (default: a temporary folder)."""
    trust_remote_code: bool = False

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.fullmatch(value):
            raise ValueError(f"unknown device {value!r}: choose auto, cpu, cuda or cuda:N")
        return value
