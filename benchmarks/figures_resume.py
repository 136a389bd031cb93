"""BENCHMARKS.md's crash-safe resume table and figures, from benchmarks/results/resume-overhead.json (see render.py)."""
from __future__ import annotations

from benchmarks.figures import FIGURES, figure, load, table

STEM = "resume-overhead"


def _summary() -> dict:
    return load(STEM)["summary"]


def _share(value: float) -> str:
    return f"{100 * value:+.1f}%"


def _verdict(value: float) -> str:
    return "**met**" if value <= _summary()["target"] else "**missed**"


GPU = "resume-overhead-gpu"


@figure("resume")
def resume_table(stem: str = STEM) -> str:
    rows = load(stem)["rows"]
    # files written before resumes replayed the restored layers also kept hidden states (the last layer: none)
    hidden = "hidden_saved" in rows[0]
    body = []
    for r in rows:
        body.append([r["repeat"], "with" if r["checkpoints"] else "without", f"{r['wall_s']:.1f}", f"{r['prune_s']:.1f}",
                     f"{r['pass_checkpoint_s']:.2f}", f"{r['flush_wait_s']:.2f}", f"{r['fingerprint_s']:.2f}",
                     f"{r['cleanup_s']:.2f}", f"{r['bytes_written'] / 2**30:.2f}",
                     *([f"{r['hidden_saved']} of {r['layers'] - 1}" if r["checkpoints"] else "—"] if hidden else []),
                     " → ".join(f"{v:.1f}" for v in r["load_average"])])
    return table(["repeat", "checkpoints", "job s", "prune s", "hand-over s", "wait at the end s", "fingerprint s",
                  "folder removal s", "GiB written", *(["hidden states kept"] if hidden else []), "load average"], body)


@figure("resume-gpu")
def resume_gpu_table() -> str:
    return resume_table(GPU)


def _setup() -> str:
    s = load(STEM)["setup"]
    return f"{s['method'].capitalize()} {s['pattern']}, {s['nsamples']} × {s['seqlen']} calibration tokens"


def _spread(checkpoints: bool) -> str:
    walls = [r["wall_s"] for r in load(STEM)["rows"] if r["checkpoints"] == checkpoints]
    return f"{min(walls):.0f}–{max(walls):.0f} s"


def _load_range() -> str:
    values = [v for r in load(STEM)["rows"] for v in r["load_average"]]
    return f"{min(values):.1f}–{max(values):.1f}"


FIGURES["resume.setup"] = _setup
FIGURES["resume.load"] = _load_range
FIGURES["resume.cores"] = lambda: str(load(STEM)["setup"]["cpu_count"])
FIGURES["resume.wall_without"] = lambda: f"{_summary()['wall_without_s']:.0f} s"
FIGURES["resume.wall_with"] = lambda: f"{_summary()['wall_with_s']:.0f} s"
FIGURES["resume.overhead"] = lambda: _share(_summary()["overhead"])
FIGURES["resume.accounted"] = lambda: f"{_summary()['accounted_s']:.2f} s"
FIGURES["resume.accounted_share"] = lambda: f"{100 * _summary()['accounted_share']:.1f}%"
FIGURES["resume.verdict_accounted"] = lambda: _verdict(_summary()["accounted_share"])
FIGURES["resume.spread"] = lambda: _spread(False)
FIGURES["resume.spread_with"] = lambda: _spread(True)

FIGURES["resume-gpu.device"] = lambda: load(GPU)["setup"]["device"]
FIGURES["resume-gpu.model"] = lambda: f"{load(GPU)['setup']['model']}, {load(GPU)['setup']['model_gib']} GiB"
FIGURES["resume-gpu.wall_without"] = lambda: f"{load(GPU)['summary']['wall_without_s']:.1f} s"
FIGURES["resume-gpu.wall_with"] = lambda: f"{load(GPU)['summary']['wall_with_s']:.1f} s"
FIGURES["resume-gpu.overhead"] = lambda: _share(load(GPU)["summary"]["overhead"])
FIGURES["resume-gpu.accounted_share"] = lambda: f"{100 * load(GPU)['summary']['accounted_share']:.1f}%"
FIGURES["resume-gpu.verdict"] = lambda: ("**met**" if load(GPU)["summary"]["overhead"] <= load(GPU)["summary"]["target"]
                                         else "**missed**")
FIGURES["resume-gpu.digest"] = lambda: f"{load(GPU)['setup']['digest_estimate_s']:.1f} s"
