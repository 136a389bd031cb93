"""The stage registry: a stage kind is a typed config, a result model and a function over the session.

A new stage (factorize, attention, graph) is one module under compress/pipeline/stages/ that calls
`register(...)`, and one import in stages/__init__.py. A stage that writes files of its own checks them in
`check_outputs` and writes them through `session.staging`, published only when the whole job succeeds.

Each session kind has its own stage kinds: STAGES for a language-model recipe (the default), GRAPH_STAGES
for a graph recipe (`kind: graph`, compress/pipeline/graph_session.py); `StageSpec.session` picks one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

__all__ = ["StageSpec", "STAGES", "GRAPH_STAGES", "SESSION_STAGES", "register"]


@dataclass(frozen=True)
class StageSpec:
    kind: str
    config: type  # a StrictConfig subclass with `kind: Literal[...]` and `name: str | None`
    run: Callable  # run(session, config) -> StageResult
    summary: str
    needs_calibration: Callable = lambda config: False  # config -> bool
    check: Callable | None = None  # check(session, config) once the model is loaded, before any stage runs
    check_outputs: Callable | None = None  # check_outputs(config): the stage's own output files, before loading
    prepare: Callable | None = None  # prepare(session, config) on the model as loaded, before any stage runs
    flags: dict[str, str] | None = None  # config key -> CLI flag, for errors raised from the CLI
    session: str = "llm"  # the session kind whose recipes may hold this stage (a key of SESSION_STAGES)


STAGES: dict[str, StageSpec] = {}  # a language-model session's stage kinds
GRAPH_STAGES: dict[str, StageSpec] = {}  # a graph session's
SESSION_STAGES: dict[str, dict[str, StageSpec]] = {"llm": STAGES, "graph": GRAPH_STAGES}


def register(spec: StageSpec) -> StageSpec:
    SESSION_STAGES[spec.session][spec.kind] = spec
    return spec
