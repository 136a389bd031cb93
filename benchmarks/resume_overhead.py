"""What crash-safe resume costs: the same prune timed with and without its per-layer checkpoints.

Default: the default model on the CPU, Wanda 2:4, as `compress run` does it (a Session with an output folder:
load, calibrate, prune, export, report.json), once with the work folder (lock, fingerprint, checkpoints)
and once without, alternating, `--repeats` times each. Besides the wall times (noisy on a shared machine) it
records what the checkpoints cost the job's own thread: the copies and hand-over per layer, the wait for
the writer at the end of the pass, the fingerprint (model and calibration digests) and removing the folder.

--gpu-shape: a randomly initialised 7B-shape Llama (hidden 4096, intermediate 11008, --layers 32; fewer if
CPU memory or disk is short: the script says how many it used) pruned with prune_model on one GPU, with and
without a LayerCheckpoint; the model is not on disk there, so no fingerprint is taken: `digest_estimate_s`
is the sha256 time of its bytes, extrapolated from hashing the first GiB.

Usage: python -m benchmarks.resume_overhead --out benchmarks/results/resume-overhead.json
       python -m benchmarks.resume_overhead --gpu-shape --out benchmarks/results/resume-overhead-gpu.json
       python -m benchmarks.resume_overhead --tiny --out /tmp/tiny.json   # tiny random model: a quick check
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks._meta import meta
from benchmarks._tiny import tiny_model

TARGET = 0.05  # of the job's wall time


def _checkpoint_costs(checkpoints: list, work_stats: dict) -> dict:
    """What the checkpoints cost the job's own thread, from their counters (zeros without checkpoints)."""
    stats = [c.stats for c in checkpoints]
    total = lambda key: sum(s[key] for s in stats)  # noqa: E731
    return {"pass_checkpoint_s": round(total("pass_seconds"), 3), "flush_wait_s": round(total("flush_seconds"), 3),
            "fingerprint_s": round(work_stats.get("fingerprint_seconds", 0.0), 3),
            "cleanup_s": round(work_stats.get("cleanup_seconds", 0.0), 3),
            "bytes_written": total("bytes_queued"), "layers_saved": total("layers_saved"),
            "writer_copy_s": round(total("writer_copy_seconds"), 3)}


def session_row(recipe_data: dict, scratch: Path, checkpoints: bool) -> dict:
    """One `compress run` job in this process, with or without its work folder."""
    from compress.pipeline.recipe import validate_recipe
    from compress.pipeline.session import Session

    out = scratch / ("with" if checkpoints else "without")
    session = Session(validate_recipe({**recipe_data, "out": str(out)}), resumable=checkpoints)
    started, load = time.perf_counter(), os.getloadavg()[0]
    session.run()
    wall = time.perf_counter() - started
    prune = session.report.stage("prune").result
    shutil.rmtree(out)
    work = session.work
    costs = _checkpoint_costs(work.checkpoints if work else [], work.stats if work else {})
    return {"checkpoints": checkpoints, "wall_s": round(wall, 3), "prune_s": round(prune.seconds, 3),
            "layers": len(prune.layers), "load_average": _load_average(load), **costs}


def pass_row(model, original: dict, config, calibration, device: str, scratch: Path, checkpoints: bool) -> dict:
    """One prune_model pass over the in-memory model (weights reset first), with or without a LayerCheckpoint."""
    import torch

    from compress.prune.apply import prune_model
    from compress.prune.checkpoint import LayerCheckpoint

    model.load_state_dict(original)
    folder = scratch / "checkpoint"
    checkpoint = LayerCheckpoint(folder) if checkpoints else None
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
    started, load = time.perf_counter(), os.getloadavg()[0]
    result = prune_model(model, config, calibration, device, checkpoint=checkpoint)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    wall = time.perf_counter() - started
    if checkpoints:
        shutil.rmtree(folder)
    costs = _checkpoint_costs([checkpoint] if checkpoint else [], {})
    return {"checkpoints": checkpoints, "wall_s": round(wall, 3), "prune_s": round(result.seconds, 3),
            "layers": len(result.steps), "load_average": _load_average(load), **costs}


def _load_average(at_start: float) -> list[float]:
    """The machine's 1-minute load average at the start and the end of a row (others' jobs included)."""
    return [round(at_start, 2), round(os.getloadavg()[0], 2)]


def summary(rows: list[dict]) -> dict:
    off = statistics.median(r["wall_s"] for r in rows if not r["checkpoints"])
    on_rows = [r for r in rows if r["checkpoints"]]
    on = statistics.median(r["wall_s"] for r in on_rows)
    accounted = statistics.median(r["pass_checkpoint_s"] + r["flush_wait_s"] + r["fingerprint_s"] + r["cleanup_s"]
                                  for r in on_rows)
    return {"wall_without_s": round(off, 3), "wall_with_s": round(on, 3), "overhead": round(on / off - 1, 4),
            "accounted_s": round(accounted, 3), "accounted_share": round(accounted / on, 4), "target": TARGET}


def cpu_setup(args, scratch: Path) -> tuple[dict, dict]:
    calibrate = {"nsamples": args.nsamples, "seqlen": args.seqlen, "seed": 0}
    model = None
    if args.tiny:
        model, text = tiny_model(scratch)
        calibrate.update(text=text, nsamples=4, seqlen=32)
    recipe = {"model": model, "device": "cpu", "calibrate": calibrate,
              "stages": [{"prune": {"method": "wanda", "pattern": "2:4"}}]}
    setup = {"mode": "tiny" if args.tiny else "cpu", "model": "tiny random Llama" if args.tiny else "default",
             "device": "cpu", "method": "wanda", "pattern": "2:4", "nsamples": calibrate["nsamples"],
             "seqlen": calibrate["seqlen"], "hidden": None, "layers_asked": None, "model_gib": None,
             "digest_estimate_s": None, "cpu_count": os.cpu_count()}
    return {k: v for k, v in recipe.items() if v is not None}, setup


def gpu_shape(args, scratch: Path) -> tuple[list[dict], dict]:
    import torch

    from benchmarks._compat import prune_config
    from benchmarks.prune_7b import random_llama

    model = random_llama(args.layers, 4096, 11008, torch.bfloat16)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    original = {k: v.clone() for k, v in model.state_dict().items()}
    calibration = torch.randint(0, 32000, (args.nsamples, args.seqlen), generator=torch.Generator().manual_seed(0))
    config = prune_config("wanda", "2:4")
    rows = []
    pass_row(model, original, config, calibration[:1], args.device, scratch, False)  # untimed warm-up
    for repeat in range(args.repeats):
        for checkpoints in (False, True) if repeat % 2 == 0 else (True, False):  # ABBA against drift
            rows.append({"repeat": repeat, **pass_row(model, original, config, calibration, args.device, scratch,
                                                       checkpoints)})
            print(json.dumps(rows[-1]), flush=True)
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else args.device
    setup = {"mode": "gpu-shape", "model": f"random 7B-shape Llama, {args.layers} layers, bfloat16",
             "device": device, "method": "wanda", "pattern": "2:4", "nsamples": args.nsamples,
             "seqlen": args.seqlen, "hidden": 4096, "layers_asked": args.layers, "model_gib": round(size / 2**30, 2),
             "digest_estimate_s": round(_sha256_seconds(model, size), 2), "cpu_count": os.cpu_count()}
    return rows, setup


def _sha256_seconds(model, size: int) -> float:
    """sha256 time of the model's bytes, extrapolated from its first GiB (what a fingerprint of files costs)."""
    import torch

    h, hashed, started = hashlib.sha256(), 0, time.perf_counter()
    for param in model.parameters():
        h.update(param.detach().contiguous().view(torch.uint8).numpy())
        hashed += param.numel() * param.element_size()
        if hashed >= 2**30:
            break
    return (time.perf_counter() - started) * size / hashed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--nsamples", type=int, default=None, help="default: 32 (CPU), 128 (--gpu-shape)")
    parser.add_argument("--seqlen", type=int, default=None, help="default: 512 (CPU), 2048 (--gpu-shape)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--gpu-shape", action="store_true", help="a random 7B-shape Llama on one GPU")
    parser.add_argument("--layers", type=int, default=32, help="--gpu-shape: decoder layers (32 is the 7B shape)")
    parser.add_argument("--device", default="cuda", help="--gpu-shape: where the layers run (cpu: a slow check)")
    parser.add_argument("--scratch", default=None, help="folder for the outputs and checkpoints (default: a temp one)")
    parser.add_argument("--tiny", action="store_true", help="tiny random model, one repeat")
    args = parser.parse_args()
    args.nsamples = args.nsamples or (128 if args.gpu_shape else 32)
    args.seqlen = args.seqlen or (2048 if args.gpu_shape else 512)
    if args.tiny:
        args.repeats = 1
    run_meta = meta()
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        scratch = Path(tmp)
        if args.gpu_shape:
            rows, setup = gpu_shape(args, scratch)
        else:
            recipe, setup = cpu_setup(args, scratch)
            warm = {**recipe, "calibrate": {**recipe["calibrate"], "nsamples": 1}}
            session_row(warm, scratch, False)  # untimed: first imports, lazy initialisation, the page cache
            rows = []
            for repeat in range(args.repeats):
                for checkpoints in (False, True) if repeat % 2 == 0 else (True, False):  # ABBA against drift
                    rows.append({"repeat": repeat, **session_row(recipe, scratch, checkpoints)})
                    print(json.dumps(rows[-1]), flush=True)
    result = {"meta": run_meta, "setup": setup, "rows": rows, "summary": summary(rows)}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
