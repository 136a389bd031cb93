"""The base of every typed config: unknown keys and wrong types are errors that name the key; and the bounds
numbers share wherever torch or numpy takes them (configs use `count`/`seed` fields, plain classes `check_*`)."""
from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, field_validator

from compress.errors import BadInput

__all__ = ["StrictConfig", "count", "seed", "SEED_MAX", "COUNT_MAX", "check_count", "check_seed", "check_positive"]

SEED_MAX = 2 ** 32 - 1  # numpy's range; torch's 64-bit one keeps room for per-layer seeds (seed * 100003 + layer)
COUNT_MAX = 2 ** 31 - 1  # windows, tokens, steps, layers, experts: far beyond any real job, within every index type
_INT64 = 2 ** 63


def count(default, minimum: int = 1, maximum: int = COUNT_MAX):
    """A count field: at least `minimum`, at most COUNT_MAX."""
    return Field(default, ge=minimum, le=maximum)


def seed(default: int = 0):
    return Field(default, ge=0, le=SEED_MAX)


class StrictConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False,
                              use_attribute_docstrings=True)

    @field_validator("*")
    @classmethod
    def _fits_int64(cls, value):
        """A net under every integer field: torch reads them as int64 (explicit bounds come first)."""
        if type(value) is int and not -_INT64 <= value < _INT64:
            raise ValueError(f"{value} is out of range (integers here fit in 64 bits)")
        return value


def check_count(value, key: str, minimum: int = 1, maximum: int = COUNT_MAX) -> int:
    """For settings outside the typed configs: an integer in [minimum, maximum], or BadInput naming `key`."""
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise BadInput(f"must be an integer from {minimum} to {maximum}, got {value}", key=key)
    return value


def check_seed(value, key: str = "seed") -> int:
    return check_count(value, key, 0, SEED_MAX)


def check_positive(value, key: str, maximum: float = math.inf) -> float:
    """A finite number in (0, maximum], or BadInput naming `key`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and 0 < value <= maximum):
        raise BadInput(f"must be a finite number above 0{f' and at most {maximum:g}' if maximum < math.inf else ''}, "
                       f"got {value}", key=key)
    return float(value)
