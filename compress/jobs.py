"""Whole jobs (load → calibrate → prune → evaluate → export) as plain functions the CLI and recipes call."""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from typing import Callable

from compress.calibrate.data import TextSource
from compress.errors import BadInput
from compress.permute import PermuteConfig
from compress.prune.pattern import Pattern

__all__ = ["PruneJob", "run_prune", "EvalJob", "run_eval", "Hooks"]


@dataclass
class Hooks:
    """Progress callbacks; the CLI renders them, library users may ignore them."""

    stage: Callable[[str], None] = lambda message: None
    layer: Callable[[object, int], None] | None = None


@dataclass
class PruneJob:
    model: str | None = None
    method: str = "wanda"
    pattern: Pattern = field(default_factory=lambda: Pattern(n=2, m=4))
    targets: str | None = None
    ignore: str | None = None
    calibration: TextSource = field(default_factory=TextSource)
    nsamples: int = 128
    seqlen: int = 2048
    seed: int = 0
    options: dict = field(default_factory=dict)
    calib_batch: int = 0
    dtype: str = "auto"
    device: str = "auto"
    out: str | None = None
    export: str = "hf"  # hf: plain checkpoint, zeros in place; compressed: N:M values + bit masks
    force: bool = False
    evaluate: bool = False
    evaluation: TextSource = field(default_factory=TextSource)
    eval_context: int = 1024
    eval_tokens: int | None = None
    trust_remote_code: bool = False
    permute: PermuteConfig = field(default_factory=PermuteConfig)


def _versions() -> dict:
    import torch
    import transformers

    from compress import __version__

    return {"compress": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}


def _eval_ids(tokenizer, job, cache: dict):
    from compress.calibrate.data import evaluation_tokens

    if "ids" not in cache:
        cache["ids"] = evaluation_tokens(tokenizer, job.evaluation, job.eval_tokens)
    return cache["ids"]


def run_prune(job: PruneJob, hooks: Hooks | None = None) -> dict:
    """Run a prune job end to end and return its report (also written as the manifest when exporting)."""
    import torch

    from compress.calibrate.data import calibration_tokens
    from compress.evaluate import perplexity
    from compress.export import check_output_dir, save_checkpoint
    from compress.models import compile_regex, load_model, resolve_device
    from compress.prune import METHODS
    from compress.prune.apply import PruneConfig, check_config, prune_model

    hooks = hooks or Hooks()
    started = time.perf_counter()
    if job.method not in METHODS:
        raise BadInput(f"unknown method {job.method!r}: choose one of {', '.join(METHODS)}")
    compile_regex(job.targets, "--targets")
    compile_regex(job.ignore, "--ignore")
    out = check_output_dir(job.out, job.force, (job.model,)) if job.out else None
    if job.export not in ("hf", "compressed"):
        raise BadInput(f"unknown --export {job.export!r}: choose hf or compressed")
    if job.export == "compressed" and not job.pattern.is_nm:
        raise BadInput("--export compressed needs an N:M pattern (--pattern), not --sparsity")
    device = resolve_device(job.device)
    config = PruneConfig(job.method, job.pattern, job.targets, job.ignore, job.options, job.calib_batch, job.permute)

    hooks.stage(f"loading {job.model or 'the default model (SmolLM2-135M-Instruct)'}")
    model, tokenizer, source = load_model(job.model, job.dtype, device, job.trust_remote_code)
    check_config(model, config)
    seqlen = min(job.seqlen, getattr(model.config, "max_position_embeddings", job.seqlen) or job.seqlen)
    report: dict = {
        "model": source, "method": job.method, "pattern": job.pattern.to_dict(),
        "targets": job.targets or "every Linear inside the decoder layers", "ignore": job.ignore,
        "options": job.options, "permute": _permute_report(job),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": device,
    }
    calibration = None
    if METHODS[job.method].collector is not None:
        hooks.stage(f"reading calibration text ({job.nsamples} × {seqlen} tokens)")
        calibration = calibration_tokens(tokenizer, job.calibration, job.nsamples, seqlen, job.seed)
    report["calibration"] = {
        "source": job.calibration.describe("austen:" + "+".join(_calibration_titles())),
        "nsamples": job.nsamples, "seqlen": seqlen, "seed": job.seed, "used": calibration is not None,
    }
    eval_cache: dict = {}
    if job.evaluate:
        hooks.stage("measuring dense perplexity")
        dense = perplexity(model, _eval_ids(tokenizer, job, eval_cache), job.eval_context, device)
        report["perplexity"] = {"dense": dense.to_dict()}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    hooks.stage(f"pruning with {job.method} to {job.pattern}")
    result = prune_model(model, config, calibration, device, on_layer=hooks.layer)
    report["prune"] = result.to_dict()
    if device.startswith("cuda"):
        report["prune"]["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
    if job.evaluate:
        hooks.stage("measuring pruned perplexity")
        pruned = perplexity(model, _eval_ids(tokenizer, job, eval_cache), job.eval_context, device)
        report["perplexity"]["pruned"] = pruned.to_dict()
        report["perplexity"]["source"] = job.evaluation.describe("austen:" + _evaluation_title())
    report["versions"] = _versions()
    report["seconds_total"] = round(time.perf_counter() - started, 3)
    if out is not None:
        hooks.stage(f"writing {out}")
        if job.export == "compressed":
            from compress.export.compressed import save_compressed

            save_compressed(model, tokenizer, out, report, job.pattern, list(result.linears),
                            result.permutations, job.force, fold_sites=result.permutation_sites)
        else:
            save_checkpoint(model, tokenizer, out, report, job.force, extra_tensors=result.permutations)
        report["out"] = str(out)
    return report


def _permute_report(job: PruneJob) -> dict:
    from compress.permute import SITE_NOTES

    if job.permute.kind == "none" or not job.pattern.is_nm:
        return {"kind": "none"}
    learn = job.permute.learn
    return {"kind": job.permute.kind, "perm_blocks": job.permute.blocks, "sites": SITE_NOTES,
            "learned": {"block": learn.block, "steps": learn.steps, "lr": learn.lr,
                        "tau": [learn.tau_start, learn.tau_end]} if job.permute.kind == "learned" else None,
            "stored_in": "permutations.safetensors (one int64 index per Linear: W_pruned[:, perm] is N:M)"}


def _calibration_titles():
    from compress.assets import CALIBRATION_NOVELS

    return CALIBRATION_NOVELS


def _evaluation_title():
    from compress.assets import EVALUATION_NOVEL

    return EVALUATION_NOVEL


@dataclass
class EvalJob:
    models: list[str | None]
    evaluation: TextSource = field(default_factory=TextSource)
    context: int = 1024
    max_tokens: int | None = None
    dtype: str = "auto"
    device: str = "auto"
    trust_remote_code: bool = False


def run_eval(job: EvalJob, hooks: Hooks | None = None) -> dict:
    """Perplexity of each model on the same held-out tokens (tokenized by each model's own tokenizer)."""
    from compress.calibrate.data import evaluation_tokens
    from compress.evaluate import perplexity
    from compress.models import load_model, resolve_device

    hooks = hooks or Hooks()
    device = resolve_device(job.device)
    results = []
    for name in job.models:
        hooks.stage(f"evaluating {name or 'the default model'}")
        model, tokenizer, source = load_model(name, job.dtype, device, job.trust_remote_code)
        ids = evaluation_tokens(tokenizer, job.evaluation, job.max_tokens)
        results.append({"model": source, **perplexity(model, ids, job.context, device).to_dict()})
        del model
    return {"source": job.evaluation.describe("austen:" + _evaluation_title()), "results": results,
            "versions": _versions()}
