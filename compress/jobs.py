"""Whole jobs (load → calibrate → prune → evaluate → export) as plain functions the CLI and recipes call."""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from typing import Callable

from compress.calibrate.data import TextSource
from compress.errors import BadInput
from compress.permute import PermuteConfig
from compress.pattern import Pattern

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
    device_map: str | None = None  # auto | balanced | balanced_low_0 | sequential | JSON file (see placement)
    max_memory: str | None = None  # "0=70GiB,1=70GiB,cpu=200GiB"
    offload_folder: str | None = None


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
    from compress.model.loading import load_model, resolve_device
    from compress.model.layers import compile_regex
    from compress.model.placement import has_offloaded, parse_device_map
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
    placement = parse_device_map(job.device_map, job.max_memory, job.offload_folder)
    config = PruneConfig(job.method, job.pattern, job.targets, job.ignore, job.options, job.calib_batch, job.permute)

    hooks.stage(f"loading {job.model or 'the default model (SmolLM2-135M-Instruct)'}")
    model, tokenizer, source = load_model(job.model, job.dtype, _load_device(placement, device),
                                          job.trust_remote_code, placement)
    device = _compute_device(model, device, placement)
    if job.export == "compressed" and has_offloaded(model):
        raise BadInput("--export compressed cannot read offloaded weights yet: use --export hf, or a --device-map "
                       "without cpu/disk entries")
    check_config(model, config)
    seqlen = min(job.seqlen, getattr(model.config, "max_position_embeddings", job.seqlen) or job.seqlen)
    report: dict = {
        "model": source, "method": job.method, "pattern": job.pattern.to_dict(),
        "targets": job.targets or "every Linear inside the decoder layers", "ignore": job.ignore,
        "options": job.options, "permute": _permute_report(job),
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": device,
    }
    if placement is not None:
        report["device_map"] = {name: str(where) for name, where in getattr(model, "hf_device_map", {}).items()}
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
        torch.cuda.init()  # the allocator's statistics refuse every device until CUDA is initialised
        for gpu in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(gpu)
    hooks.stage(f"pruning with {job.method} to {job.pattern}")
    result = prune_model(model, config, calibration, device, on_layer=hooks.layer)
    report["prune"] = result.to_dict()
    if device.startswith("cuda"):
        report["prune"]["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
        if placement is not None:
            report["prune"]["peak_gpu_bytes_per_device"] = [torch.cuda.max_memory_allocated(gpu)
                                                            for gpu in range(torch.cuda.device_count())]
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


def _kernel_rows(model, ids, context: int, device: str, source: str) -> list[dict]:
    """Perplexity and tokens/s of a compressed model on the dense path, then on the sparse kernels."""
    import torch

    from compress.evaluate import perplexity
    from compress.kernels.sparse_linear import SparseLinear, use_kernels

    if torch.device(device).type != "cuda":
        raise BadInput("--kernels needs a CUDA GPU (--device cuda)")
    if not any(isinstance(m, SparseLinear) for m in model.modules()):
        raise BadInput(f"{source}: --kernels needs a compressed export (compress prune ... --export compressed)")
    from compress.kernels.graphs import graphed_logits

    model.to(device)
    rows = []
    for path in ("dense", "kernels"):  # both as CUDA graphs: outside one, cuSPARSELt's host time dominates
        use_kernels(model, path == "kernels")
        forward = graphed_logits(model)
        # captures the graph; its warm-up runs the algorithm searches and Triton compiles
        perplexity(model, ids[:context], context, device, forward=forward)
        torch.cuda.synchronize()
        result = perplexity(model, ids, context, device, forward=forward).to_dict()
        del forward
        result["tokens_per_second"] = result["tokens"] / max(result["seconds"], 1e-9)
        rows.append({"model": f"{source} ({path})", "path": path, **result})
    return rows


def _load_device(placement, device: str) -> str:
    """The device that decides `--dtype auto`: a map that keeps everything on CPU/disk computes on the CPU."""
    return (placement.compute_device() or device) if placement is not None else device


def _compute_device(model, device: str, placement) -> str:
    """Where inputs go: with a device_map, the model's main device (it may sit whole on one GPU, without hooks)."""
    from compress.model.placement import main_device

    return str(main_device(model, next(model.parameters()).device)) if placement is not None else device


def _permute_report(job: PruneJob) -> dict:
    from compress.permute import SITE_NOTES

    if job.permute.kind == "none" or not job.pattern.is_nm:
        return {"kind": "none"}
    learn = job.permute.learn
    return {"kind": job.permute.kind, "perm_blocks": job.permute.blocks, "sites": SITE_NOTES,
            "learned": learn.to_dict() if job.permute.kind == "learned" else None,
            "stored_in": "permutations.safetensors (one int64 index per Linear: W_pruned[:, perm] is N:M)"}


def _calibration_titles():
    from compress.defaults.assets import CALIBRATION_NOVELS

    return CALIBRATION_NOVELS


def _evaluation_title():
    from compress.defaults.assets import EVALUATION_NOVEL

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
    device_map: str | None = None
    max_memory: str | None = None
    offload_folder: str | None = None
    kernels: bool = False  # compressed exports: also run on the sparse GPU kernels, with tokens/s


def run_eval(job: EvalJob, hooks: Hooks | None = None) -> dict:
    """Perplexity of each model on the same held-out tokens (tokenized by each model's own tokenizer)."""
    from compress.calibrate.data import evaluation_tokens
    from compress.evaluate import perplexity
    from compress.model.loading import load_model, resolve_device
    from compress.model.placement import parse_device_map

    hooks = hooks or Hooks()
    device = resolve_device(job.device)
    placement = parse_device_map(job.device_map, job.max_memory, job.offload_folder)
    results = []
    for name in job.models:
        hooks.stage(f"evaluating {name or 'the default model'}")
        model, tokenizer, source = load_model(name, job.dtype, _load_device(placement, device),
                                              job.trust_remote_code, placement)
        ids = evaluation_tokens(tokenizer, job.evaluation, job.max_tokens)
        where = _compute_device(model, device, placement)
        if job.kernels:
            results.extend(_kernel_rows(model, ids, job.context, where, source))
        else:
            results.append({"model": source, **perplexity(model, ids, job.context, where).to_dict()})
        del model
    return {"source": job.evaluation.describe("austen:" + _evaluation_title()), "results": results,
            "versions": _versions()}
