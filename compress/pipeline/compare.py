"""`compress eval`: perplexity of several models on the same held-out text, each tokenized by its own
tokenizer; compressed exports optionally also on the sparse GPU kernels, with tokens/s."""
from __future__ import annotations

from typing import Any

from pydantic import Field

from compress.calibrate.config import TextConfig
from compress.config import count
from compress.model.config import LoadConfig
from compress.errors import BadInput
from compress.pipeline.report import ReportModel
from compress.pipeline.session import Progress, versions
from compress.zero_shot.config import TaskNames

__all__ = ["CompareConfig", "CompareReport", "KernelFallback", "compare_models", "zero_shot_of"]


class CompareConfig(LoadConfig, TextConfig):
    models: list[str | None] = Field(default_factory=lambda: [None])
    context: int = count(1024, minimum=2)
    tokens: int | None = count(None, minimum=2)
    kernels: bool = False
    """Compressed exports: also run on the sparse GPU kernels (each forward replayed as a CUDA graph)."""
    allow_fallback: bool = False
    """With kernels: report Linears that fell back to the dense path instead of failing on them."""
    bos: bool = True
    """Start each window with the tokenizer's BOS where it adds one."""
    tasks: TaskNames | None = None
    """Zero-shot tasks through lm-evaluation-harness (compress.zero_shot), each model's rows also get them."""
    limit: int | None = count(None)
    """Zero-shot: score only the first `limit` items of each task."""


class KernelFallback(Exception):
    """Some Linears did not run on their sparse kernel (exit 1 unless allowed): the speed is not the kernels'."""

    def __init__(self, fallbacks: dict[str, str]):
        self.fallbacks = fallbacks
        named = "; ".join(f"{name}: {why}" for name, why in list(fallbacks.items())[:5])
        more = f" (+{len(fallbacks) - 5} more)" if len(fallbacks) > 5 else ""
        super().__init__(f"{len(fallbacks)} Linears fell back from their sparse kernel: {named}{more}")


class CompareReport(ReportModel):
    source: str
    results: list[dict[str, Any]]
    versions: dict[str, str]
    models: list[str] = Field(default_factory=list)  # each model as resolved, in order
    held_out: list[dict[str, Any]] = Field(default_factory=list)  # digest of the token ids each model's tokenizer made


def _kernel_rows(model, ids, context: int, device: str, source: str, bos_id, allow_fallback: bool) -> list[dict]:
    """Perplexity and tokens/s of a compressed model on the dense path, then on the sparse kernels."""
    import torch

    from compress.evaluate import perplexity
    from compress.kernels.sparse_linear import SparseLinear, kernel_fallbacks, kernel_usage, use_kernels

    if torch.device(device).type != "cuda":
        raise BadInput("kernels need a CUDA GPU (device cuda)", key="kernels")
    if not any(isinstance(m, SparseLinear) for m in model.modules()):
        raise BadInput(f"{source}: kernels need a compressed export (prune ... --export compressed)", key="kernels")
    from compress.kernels.graphs import graphed_logits

    model.to(device)
    rows = []
    for path in ("dense", "kernels"):  # both as CUDA graphs: outside one, cuSPARSELt's host time dominates
        use_kernels(model, path == "kernels")
        forward = graphed_logits(model)
        # captures the graph; its warm-up runs the algorithm searches and Triton compiles
        perplexity(model, ids[:context], context, device, forward=forward, bos_id=bos_id)
        torch.cuda.synchronize()
        result = perplexity(model, ids, context, device, forward=forward, bos_id=bos_id).to_dict()
        del forward
        result["tokens_per_second"] = result["tokens"] / max(result["seconds"], 1e-9)
        if path == "kernels":
            result["linears_per_path"] = {name: len(names) for name, names in kernel_usage(model).items()}
            result["fallbacks"] = kernel_fallbacks(model)
            if result["fallbacks"] and not allow_fallback:
                raise KernelFallback(result["fallbacks"])
        rows.append({"model": f"{source} ({path})", "path": path, **result})
    return rows


def compare_models(config: CompareConfig, progress: Progress | None = None) -> CompareReport:
    from compress.evaluate import perplexity

    def measure(loaded, ids, bos_id) -> list[dict]:
        if config.kernels:
            return _kernel_rows(loaded.model, ids, config.context, loaded.device, loaded.source, bos_id,
                                config.allow_fallback)
        return [{"model": loaded.source, **perplexity(loaded.model, ids, config.context, loaded.device,
                                                      bos_id=bos_id).to_dict(), **zero_shot_of(config, loaded)}]

    return measure_each_model(config, measure, progress)


def zero_shot_of(config, loaded, settings=None) -> dict:
    """{"zero_shot": lm-eval's results} for config.tasks (with Double Sparsity `settings`), or {}."""
    if not config.tasks:
        return {}
    from compress.zero_shot import zero_shot

    return {"zero_shot": zero_shot(loaded.model, loaded.tokenizer, config.tasks, config.limit, loaded.device,
                                   double_sparsity=settings, context=config.context)}


def measure_each_model(config, measure, progress: Progress | None = None, what: str = "") -> CompareReport:
    """Load each of config.models in turn (one in memory at a time), and report measure(loaded, ids, bos_id)'s
    rows over the same held-out tokens."""
    from compress.calibrate.data import evaluation_tokens, window_bos
    from compress.defaults.assets import EVALUATION_NOVEL
    from compress.pipeline.loading import load_placed

    progress = progress or Progress()
    if config.tasks:
        from compress.zero_shot import check_tasks

        if config.kernels:
            raise BadInput("zero-shot tasks run on the model in PyTorch; they do not combine with --kernels",
                           key="kernels")
        check_tasks(config.tasks)
    from compress.pipeline.run_report import tokens_digest

    source = config.source()
    described = source.describe("austen:" + EVALUATION_NOVEL)
    results, models, digests = [], [], []
    for name in config.models:
        progress.stage(f"evaluating {name or 'the default model'}{what}")
        loaded = load_placed(config, name)
        ids = evaluation_tokens(loaded.tokenizer, source, config.tokens)
        results += measure(loaded, ids, window_bos(loaded.tokenizer, config.bos))
        models.append(loaded.source)
        digests.append(tokens_digest(ids, described).model_dump())
        del loaded
    return CompareReport(source=described, results=results, versions=versions(), models=models, held_out=digests)
