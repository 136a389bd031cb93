"""The eval stage: perplexity on held-out text and, with `tasks`, zero-shot accuracy through lm-evaluation-harness,
of the model as loaded (`before`) and after the stages so far (with Double Sparsity attention if set)."""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from typing import Any, Literal

from compress.attention.config import DoubleSparsity
from compress.calibrate.config import TextConfig
from compress.config import count
from compress.pipeline.registry import StageSpec, register
from compress.pipeline.report import StageResult
from compress.zero_shot.config import TaskNames

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
    tasks: TaskNames | None = None
    """Zero-shot tasks through lm-evaluation-harness (pip install 'compress[zeroshot]'): persuasion_next_sentence
    runs offline; lm-eval's own (hellaswag, arc_easy, ...) need the Hugging Face hub."""
    limit: int | None = count(None)
    """Zero-shot: score only the first `limit` items of each task."""
    double_sparsity: DoubleSparsity | None = None
    """Measure `after` (perplexity and tasks) with Double Sparsity attention from a channel file; `before`, the
    model as loaded, stays dense. A fractional `tokens` budget is that fraction of `context`."""


class EvalResult(StageResult):
    source: str
    before: dict[str, Any] | None = None
    after: dict[str, Any]
    zero_shot_before: dict[str, Any] | None = None
    """lm-eval's results (simple_evaluate's dict without samples) for the model as loaded."""
    zero_shot: dict[str, Any] | None = None
    """lm-eval's results for the model after the stages so far (compress.zero_shot.accuracy reads acc)."""


def _perplexity(session, config: EvalStage, settings: DoubleSparsity | None) -> dict:
    from compress.attention.evaluation.measure import sparse_perplexity
    from compress.calibrate.data import window_bos

    return sparse_perplexity(session.model, session.evaluation_tokens(config.source(), config.tokens), config.context,
                             session.device, settings, window_bos(session.tokenizer, config.bos))


def _zero_shot(session, config: EvalStage, settings: DoubleSparsity | None) -> dict:
    from compress.zero_shot import zero_shot

    return zero_shot(session.model, session.tokenizer, config.tasks, config.limit, device=session.device,
                     double_sparsity=settings, context=config.context)


def _written_earlier(session, config: EvalStage) -> bool:
    """The channel file is the output of an attention stage before this one (it exists once the job ends)."""
    from compress.paths import user_path

    target = user_path(config.double_sparsity.channel_file).absolute()
    earlier = session.recipe.stages[:session.recipe.stages.index(config)]
    return any(s.kind == "attention" and user_path(s.channel_file).absolute() == target for s in earlier)


@contextmanager
def _readable(session, settings: DoubleSparsity):
    """The settings with a channel file that can be read now: one an earlier stage of this job wrote waits under
    a temporary name until the job ends, so it (and its projection file) is linked under its own name."""
    import os
    import tempfile
    from pathlib import Path

    from compress.attention.calibration.projection import projection_path
    from compress.paths import user_path

    target = user_path(settings.channel_file).absolute()
    staged = session.staging.pending(target) if session.staging is not None else None
    if staged is None:
        yield settings
        return
    with tempfile.TemporaryDirectory(prefix="compress-channels-") as folder:
        for final in (target, projection_path(target)):
            written = session.staging.pending(final)
            if written is not None:
                os.symlink(written, Path(folder) / final.name)
        yield settings.model_copy(update={"channel_file": str(Path(folder) / target.name)})


def _check(session, config: EvalStage) -> None:
    if config.tasks:
        from compress.zero_shot import check_tasks

        check_tasks(config.tasks)
    if config.double_sparsity is not None and not _written_earlier(session, config):
        from compress.attention.evaluation.runtime import build

        build(session.model, config.double_sparsity, config.context)  # reads and checks the channel file now


def _prepare(session, config: EvalStage) -> None:
    if config.before:
        session.progress.stage("measuring perplexity before any change")
        session.baselines[session.stage_name(config)] = _perplexity(session, config, None)
        if config.tasks:
            session.progress.stage(f"zero-shot {', '.join(config.tasks)} before any change")
            session.baselines[session.stage_name(config) + ".zero_shot"] = _zero_shot(session, config, None)


def _run(session, config: EvalStage) -> EvalResult:
    from compress.defaults.assets import EVALUATION_NOVEL

    name = session.stage_name(config)
    settings = config.double_sparsity
    with _readable(session, settings) if settings is not None else nullcontext() as readable:
        after = _perplexity(session, config, readable)
        if config.tasks:
            session.progress.stage(f"zero-shot {', '.join(config.tasks)}")
        zero_shot = _zero_shot(session, config, readable) if config.tasks else None
    return EvalResult(source=config.source().describe("austen:" + EVALUATION_NOVEL),
                      before=session.baselines.get(name), after=after,
                      zero_shot_before=session.baselines.get(name + ".zero_shot"), zero_shot=zero_shot)


SPEC = register(StageSpec(
    kind="eval", config=EvalStage, run=_run, check=_check, prepare=_prepare,
    summary="perplexity on held-out text (and zero-shot tasks), before and after",
    flags={"text": "--eval-text", "dataset": "--eval-dataset", "text_field": "--text-field",
           "context": "--eval-context", "tokens": "--eval-tokens", "bos": "--no-bos"},
))
