"""The eval stage: perplexity on held-out text, of the model as loaded (`before`) and after the stages so far."""
from __future__ import annotations

from typing import Any, Literal

from compress.calibrate.config import TextConfig
from compress.config import count
from compress.pipeline.registry import StageSpec, register
from compress.pipeline.report import StageResult

__all__ = ["EvalStage", "EvalResult"]


class EvalStage(TextConfig):
    """Held-out text: a file or dataset (default split: test), or Austen's Persuasion, never used to calibrate."""

    kind: Literal["eval"] = "eval"
    name: str | None = None
    context: int = count(1024, minimum=2)
    """Tokens per perplexity window (capped at the model's maximum)."""
    tokens: int | None = count(None, minimum=2)
    """Use at most this many held-out tokens."""
    before: bool = True
    """Also measure the model as loaded, before any stage changed it."""
    bos: bool = True
    """Start each window with the tokenizer's BOS where it adds one ([BOS] + context text tokens, all scored)."""


class EvalResult(StageResult):
    source: str
    before: dict[str, Any] | None = None
    after: dict[str, Any]


def _measure(session, config: EvalStage) -> dict:
    from compress.calibrate.data import window_bos
    from compress.evaluate import perplexity

    return perplexity(session.model, session.evaluation_tokens(config.source(), config.tokens), config.context,
                      session.device, bos_id=window_bos(session.tokenizer, config.bos)).to_dict()


def _prepare(session, config: EvalStage) -> None:
    if config.before:
        session.progress.stage("measuring perplexity before any change")
        session.baselines[session.stage_name(config)] = _measure(session, config)


def _run(session, config: EvalStage) -> EvalResult:
    from compress.defaults.assets import EVALUATION_NOVEL

    return EvalResult(source=config.source().describe("austen:" + EVALUATION_NOVEL),
                      before=session.baselines.get(session.stage_name(config)), after=_measure(session, config))


SPEC = register(StageSpec(
    kind="eval", config=EvalStage, run=_run, prepare=_prepare,
    summary="perplexity on held-out text, before and after",
    flags={"text": "--eval-text", "dataset": "--eval-dataset", "text_field": "--text-field",
           "context": "--eval-context", "tokens": "--eval-tokens", "bos": "--no-bos"},
))
