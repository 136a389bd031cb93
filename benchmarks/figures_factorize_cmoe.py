"""BENCHMARKS.md's CMoE side-by-side table, from benchmarks/results/factorize-cmoe-reference.json (see render.py)."""
from __future__ import annotations

import statistics

from benchmarks.figures import FIGURES, figure, load

STEM = "factorize-cmoe-reference"


def _groups() -> dict[tuple[str, float], list[dict]]:
    groups: dict[tuple[str, float], list[dict]] = {}
    for row in load(STEM)["rows"]:
        settings = ", ".join(f"{k}={v}" for k, v in sorted(row.get("settings", {}).items()))
        groups.setdefault((f"{row['method']} ({settings})" if settings else row["method"], row["active"]), []).append(row)
    return groups


@figure("factorize-cmoe")
def side_by_side() -> str:
    from benchmarks.figures import table

    dense = load(STEM)["dense_ppl"]
    body = []
    for (method, active), rows in sorted(_groups().items(), key=lambda kv: (kv[0][1], kv[0][0])):
        ppl = [r["ppl"] for r in rows]
        busiest = [max(r["max_load_over_fair"]) for r in rows if r.get("max_load_over_fair")]
        body.append([f"{100 * active:.0f}%", rows[0]["config"], method, len(rows),
                     f"**{statistics.mean(ppl):.1f}** ({min(ppl):.1f}–{max(ppl):.1f})",
                     f"{statistics.mean(ppl) / dense:.2f}×",
                     f"{max(busiest):.2f}×" if busiest else "—",
                     f"{statistics.median(r['convert_seconds'] for r in rows):.0f}"])
    return table(["active", "groups", "method", "draws", "perplexity, mean (min–max)", "vs dense",
                  "busiest expert's load over fair share (worst layer, worst draw)", "convert s (median)"], body)


def _run_commit(method: str, setting: str | None = None) -> str:
    """The commit the rows of `method` (given `setting`, a KEY=VALUE of --ours-set) were measured at (the
    file's meta names the first run's)."""
    run = next(r for r in load(STEM)["runs"] if method in r["methods"]
               and (setting is None) == ("--ours-set" not in r["meta"]["command"])
               and (setting is None or setting in r["meta"]["command"]))
    return run["meta"]["commit"][:7]


FIGURES["factorize-cmoe.dense"] = lambda: f"{load(STEM)['dense_ppl']:.2f}"
FIGURES["factorize-cmoe.eval_tokens"] = lambda: f"{load(STEM)['eval_tokens']:,}"
FIGURES["factorize-cmoe.reference"] = lambda: (f"{load(STEM)['reference']['repo']} at "
                                               f"{load(STEM)['reference']['commit'][:7]}")
FIGURES["factorize-cmoe.calibration"] = lambda: (f"{load(STEM)['calibration']['windows']} × "
                                                 f"{load(STEM)['calibration']['seqlen']} tokens, seeds "
                                                 + ", ".join(map(str, load(STEM)['calibration']['seeds'])))
FIGURES["factorize-cmoe.ours_commit"] = lambda: _run_commit("ours")
def _refit_commits() -> str:
    """Each run of the refit rows: its commit and the ratios it measured (--active, else all)."""
    parts = []
    for run in load(STEM)["runs"]:
        command = run["meta"]["command"].split()
        if "refit=true" not in command:
            continue
        at = command.index("--active") + 1 if "--active" in command else None
        ratios = []
        while at is not None and at < len(command) and not command[at].startswith("--"):
            ratios.append(f"{100 * float(command[at]):.0f}%")
            at += 1
        parts.append(f"{run['meta']['commit'][:7]} ({', '.join(ratios) or 'every ratio'})")
    return ", ".join(parts)


FIGURES["factorize-cmoe.refit_commit"] = _refit_commits
