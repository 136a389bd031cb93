"""The calibration token source every calibrated stage draws from (each stage collects its own statistics
as it walks the layers: layer i's statistics depend on the already-changed layers before it)."""
from __future__ import annotations

from pydantic import field_validator, model_validator

from compress.config import StrictConfig, count, seed as seed_field

__all__ = ["TextConfig", "CalibrateConfig"]


class TextConfig(StrictConfig):
    """Where text comes from: a file, a dataset, or (neither) the default Austen text."""

    text: str | None = None
    """A .txt/.md file, or .jsonl with `text_field`; default: Austen (five novels to calibrate, Persuasion held out)."""
    dataset: str | None = None
    """A Hugging Face dataset NAME[:CONFIG][:SPLIT] (needs compress[datasets])."""
    text_field: str = "text"

    @field_validator("text", "dataset")
    @classmethod
    def _not_empty(cls, value):
        if value is not None and not value.strip():  # "" meant the default text without a word
            raise ValueError("is empty (leave it out for the default text)")
        return value

    @model_validator(mode="after")
    def _one_source(self):
        if self.text and self.dataset:
            raise ValueError("give a text file or a dataset, not both")
        return self

    def source(self):
        from compress.calibrate.data import TextSource

        return TextSource(path=self.text, dataset=self.dataset, text_field=self.text_field)


class CalibrateConfig(TextConfig):
    nsamples: int = count(128)
    """Calibration windows."""
    seqlen: int = count(2048, minimum=2)
    """Tokens per window (capped at the model's maximum)."""
    seed: int = seed_field()
    """Seed for drawing the windows."""
    bos: bool = True
    """Start each window with the tokenizer's BOS where it adds one: [BOS] + seqlen − 1 text tokens."""
