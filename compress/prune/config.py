"""The typed settings of one pruning pass: method, pattern, targets, method options and permutation."""
from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from compress.config import StrictConfig, count, seed
from compress.errors import BadInput
from compress.pattern import Pattern, parse_pattern

__all__ = ["PruneConfig"]


class PruneConfig(StrictConfig):
    method: str = "wanda"
    """magnitude | wanda | sparsegpt | ria"""
    pattern: str | None = None
    """N:M keeps N of every M weights along the input dimension (2:4, 4:8, 6:8); default 2:4."""
    sparsity: float | None = None
    """Unstructured instead: the fraction removed from each output row."""
    targets: str | None = None
    """Regex searched in full module names; default: every Linear inside the decoder layers."""
    ignore: str | None = None
    """Regex of module names to leave dense."""
    blocksize: int = count(128)
    """SparseGPT column block."""
    damp: float = Field(0.01, ge=0.0)
    """SparseGPT Hessian damping, a fraction of its mean diagonal."""
    ria_alpha: float = Field(0.5, ge=0.0, le=10.0)
    """RIA activation exponent."""
    calib_batch: int = count(0, minimum=0)
    """Calibration windows per forward (0: about 16k tokens)."""
    permute: Literal["none", "heuristic", "learned", "global"] = "none"
    """Input-channel permutation before N:M masking: global learns block-diagonal permutations against the
    dense model's output (compress/permute/model_pass.py; optionally first per layer: global_mode.py)."""
    perm_blocks: int = count(1)
    """Split the Hungarian refinement into this many blocks (faster)."""
    perm_steps: int = count(8, minimum=0)
    """Search rounds per Linear for learned permutations."""
    perm_block_size: int = count(64, minimum=2)
    """Learned permutations score every channel swap inside windows of this many channels; global ones
    permute within blocks of this many channels."""
    perm_iters: int = count(0, minimum=0)
    """Global permutations: optimisation steps per decoder layer against the dense layer's output, in the
    sequential pass (0: the heuristic's permutations go to the model pass unchanged)."""
    perm_tokens: int = count(4096)
    """Calibration tokens per optimisation step of the per-layer global permutations."""
    perm_model_steps: int = count(30, minimum=0)
    """Global permutations: optimisation steps of the model pass, all layers at once against the dense model's
    final hidden states (0: no model pass)."""
    perm_windows: int = count(2)
    """Calibration windows per step of the model pass."""
    mask_rule: Literal["row", "block"] = "row"
    """SparseGPT unstructured masks: the same fraction of every row per column block (row), or one
    threshold over the whole block as the reference code does (block)."""
    perm_deflate: int = count(1, minimum=0)
    """Learned permutations leave the top eigendirections of XᵀX out of their loss."""
    perm_seed: int = seed()
    """Seed of the learned permutations' candidate sampling."""
    _pattern: Pattern = PrivateAttr(default=None)

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        from compress.prune import METHODS

        if value not in METHODS:
            raise ValueError(f"unknown method {value!r}: choose one of {', '.join(METHODS)}")
        return value

    @field_validator("targets", "ignore")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"bad regular expression {value!r} ({exc})") from None
        return value

    @field_validator("pattern", mode="before")
    @classmethod
    def _pattern_text(cls, value):
        return None if value is None else str(value)

    @model_validator(mode="after")
    def _consistent(self):
        if self.sparsity is not None and not math.isfinite(self.sparsity):
            raise BadInput("sparsity must be a finite fraction", key="sparsity")
        spec = self.pattern if self.pattern is not None or self.sparsity is not None else "2:4"
        self._pattern = parse_pattern(spec, self.sparsity)
        if self.permute != "none" and not self._pattern.is_nm:
            raise BadInput(f"permute {self.permute} needs an N:M pattern, not unstructured sparsity", key="permute")
        if self.mask_rule != "row" and (self.method != "sparsegpt" or self._pattern.is_nm):
            raise BadInput("mask_rule applies to sparsegpt with unstructured sparsity", key="mask_rule")
        if self.permute in ("learned", "global") and self.method == "magnitude":
            raise BadInput(f"permute {self.permute} needs calibration data, which magnitude does not use", key="permute")
        return self

    @property
    def parsed_pattern(self) -> Pattern:
        return self._pattern

    @property
    def permuting(self) -> bool:
        return self.permute != "none" and self._pattern.is_nm

    @property
    def options(self) -> dict:
        """What the method functions read (compress/prune/<method>.py)."""
        return {"blocksize": self.blocksize, "damp": self.damp, "ria_alpha": self.ria_alpha, "mask_rule": self.mask_rule}

    def permute_config(self):
        from compress.permute import GlobalConfig, PermuteConfig
        from compress.permute.learned import LearnConfig

        return PermuteConfig(self.permute, self.perm_blocks, LearnConfig(block=self.perm_block_size, steps=self.perm_steps,
                                                                       deflate=self.perm_deflate, seed=self.perm_seed),
                             GlobalConfig(steps=self.perm_iters, block=self.perm_block_size, tokens=self.perm_tokens,
                                          seed=self.perm_seed))

    def model_pass_config(self):
        """The settings of --permute global's model pass (compress/permute/model_pass.py)."""
        from compress.permute.model_pass import ModelPassConfig

        return ModelPassConfig(steps=self.perm_model_steps, windows=self.perm_windows, block=self.perm_block_size,
                               seed=self.perm_seed)
