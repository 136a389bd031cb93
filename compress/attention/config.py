"""Typed settings: calibrating a channel file, and the sparse attention that reads one."""
from __future__ import annotations

import re
from fractions import Fraction
from typing import Literal

from pydantic import field_validator

from compress.attention import defaults
from compress.calibrate.config import CalibrateConfig
from compress.config import StrictConfig, count
from compress.model.config import LoadConfig

__all__ = ["ChannelCalibration", "DoubleSparsity", "parse_budget"]

_TOP_P = re.compile(r"top-p:(0?\.\d+|1(\.0*)?)")


class ChannelCalibration(LoadConfig, CalibrateConfig):
    model: str | None = None
    out: str
    """The channel file (JSON) to write."""
    mode: Literal["qk", "q", "k"] = "qk"
    """qk: mean |q ⊙ k| after RoPE; q / k: mean |q| / |k| of the projections' outputs."""
    projection: bool = defaults.CALIBRATION_PROJECTION
    """Also fit projected labels (compress.attention.calibration.projection), written beside the channel file: the
    default DoubleSparsity reads them."""
    force: bool = False
    nsamples: int = count(defaults.CALIBRATION_NSAMPLES)
    seqlen: int = count(defaults.CALIBRATION_SEQLEN, minimum=2)
    """Tokens per window (capped at the model's maximum): projected labels choose well up to this position."""


def parse_budget(text: str, what: str) -> Fraction | int:
    """'1/16' or '0.0625' (a fraction in (0, 1]) or '64' (a count ≥ 1)."""
    try:
        value = Fraction(text.strip())
    except (ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"{what} {text!r}: give a fraction such as 1/16 or a count such as 64") from exc
    if value <= 0:
        raise ValueError(f"{what} must be positive (got {text})")
    if value.denominator == 1 and "/" not in text and "." not in text:
        return int(value)
    if value > 1:
        raise ValueError(f"{what} as a fraction must be at most 1 (got {text})")
    return value


class DoubleSparsity(StrictConfig):
    """Sparse attention from a channel file: label scores over `channels` heavy channels pick `tokens` past
    tokens per query; exact softmax attention over those.

    The defaults (compress.attention.defaults) are the setting measured best on the default model at T = 1/16."""

    channel_file: str
    channels: str = defaults.CHANNELS
    """Heavy channels (or the projected labels' rank) per head: a fraction of head_dim (1/8) or a count (8)."""
    tokens: str = defaults.TOKENS
    """Tokens kept per query: a fraction of the evaluation context, a count, or top-p:P (adaptive)."""
    dense_layers: int = count(defaults.DENSE_LAYERS, minimum=0)
    """The first layers keep dense attention."""
    label_bits: Literal[4, 8, 16] = defaults.LABEL_BITS
    labels: Literal["channels", "projection"] = defaults.LABELS
    """channels: q·k over the heavy channels (the paper); projection: (q A)·(k B) of rank `channels` from the
    file's projected labels (calibrated with --projection)."""
    position_prior: bool = defaults.POSITION_PRIOR
    """Add the file's position prior (compress.attention.calibration.prior: the mean logit per query-key distance) to the
    label scores before choosing tokens."""
    sink: int = count(0, minimum=0)
    """First tokens always kept (inside the budget)."""
    recent: int = count(0, minimum=0)
    """Most recent tokens always kept (inside the budget)."""
    mode: Literal["qk", "q", "k"] | None = None
    """Which rows of the file to read (default: the file's own mode)."""
    per_kv_head: bool = defaults.PER_KV_HEAD
    """Under GQA: one heavy-channel set per KV head (the file's GQA-aware selection), else each query head's row."""

    @field_validator("channels")
    @classmethod
    def _channels(cls, value: str) -> str:
        parse_budget(value, "channels")
        return value

    @field_validator("tokens")
    @classmethod
    def _tokens(cls, value: str) -> str:
        if value.startswith("top-p"):
            if not _TOP_P.fullmatch(value) or float(value.split(":")[1]) <= 0:
                raise ValueError(f"tokens {value!r}: top-p needs a mass in (0, 1], e.g. top-p:0.95")
            return value
        parse_budget(value, "tokens")
        return value

    def top_p(self) -> float | None:
        return float(self.tokens.split(":")[1]) if self.tokens.startswith("top-p") else None

    def channel_count(self, head_dim: int) -> int:
        from compress.errors import BadInput

        value = parse_budget(self.channels, "channels")
        count = int(value) if isinstance(value, int) else max(1, round(value * head_dim))
        if count > head_dim:
            raise BadInput(f"{count} channels asked for, but heads have only {head_dim}", key="channels")
        return count

    def token_count(self, context: int) -> int | None:
        """The fixed budget T for an evaluation context (None under top-p)."""
        if self.top_p() is not None:
            return None
        value = parse_budget(self.tokens, "tokens")
        return int(value) if isinstance(value, int) else max(1, round(value * context))
