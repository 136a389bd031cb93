"""The base of every typed config: unknown keys and wrong types are errors that name the key."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["StrictConfig"]


class StrictConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False,
                              use_attribute_docstrings=True)
