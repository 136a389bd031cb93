"""Rewrite BENCHMARKS.md's tables and marked figures from benchmarks/results/*.json.

Usage: python -m benchmarks.render            # rewrite BENCHMARKS.md in place
       python -m benchmarks.render --check    # exit 1 if it is out of date or prose holds an unmarked figure
Tables sit between `<!-- table:NAME -->` and `<!-- /table -->`, figures in prose between `<!-- v:NAME -->` and
`<!-- /v -->`; NAME is a key of figures.FIGURES. Text outside the markers is left as written, but may hold
no measured-looking number (a decimal, a percentage, a speedup or a duration) unless it is a target (≥/≤).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from benchmarks import figures_factorize  # noqa: F401  (registers the FactorLLM figures)
from benchmarks import figures_factorize_cmoe  # noqa: F401  (registers the CMoE side-by-side figures)
from benchmarks import figures_factorize_active  # noqa: F401  (registers the --active GPU figures)
from benchmarks import figures_graph  # noqa: F401  (registers the graph-transformer figures)
from benchmarks import figures_attention  # noqa: F401  (registers the Double Sparsity figures)
from benchmarks import figures_perm  # noqa: F401  (registers the permutation figures)
from benchmarks import figures_resume  # noqa: F401  (registers the crash-safe resume figures)
from benchmarks import figures_zero_shot  # noqa: F401  (registers the zero-shot figures)
from benchmarks.figures import FIGURES

DOC = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
MARK = re.compile(r"<!-- (table|v):(\S+) -->(.*?)<!-- /\1 -->", re.S)
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)
FIGURE_LIKE = re.compile(r"(?<![\w.≥≤])(?<![≥≤] )(?:\d+(?:\.\d+)?\s?(?:%|x\b|ms\b|µs\b|s\b|min\b|GiB\b)|\d+×|\d+\.\d+)")


def render(text: str) -> str:
    def fill(match: re.Match) -> str:
        kind, name = match.group(1), match.group(2)
        if name not in FIGURES:
            raise KeyError(f"BENCHMARKS.md names an unknown figure {name!r}")
        value = FIGURES[name]()
        return f"<!-- table:{name} -->\n{value}\n<!-- /table -->" if kind == "table" else f"<!-- v:{name} -->{value}<!-- /v -->"

    return MARK.sub(fill, text)


def unmarked_figures(text: str) -> list[str]:
    """Measured-looking numbers in prose outside markers and code."""
    prose = CODE.sub(" ", MARK.sub(" ", text))
    out = []
    for number, line in enumerate(prose.splitlines(), 1):
        out += [f"{m.group(0)!r} in: {line.strip()[:100]}" for m in FIGURE_LIKE.finditer(line)]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = DOC.read_text()
    new = render(text)
    stray = unmarked_figures(new)
    for line in stray:
        print("unmarked figure:", line, file=sys.stderr)
    if args.check:
        if new != text:
            print("BENCHMARKS.md is out of date: run python -m benchmarks.render", file=sys.stderr)
        return int(new != text or bool(stray))
    if new != text:
        DOC.write_text(new)
    return int(bool(stray))


if __name__ == "__main__":
    sys.exit(main())
