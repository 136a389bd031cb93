"""Quality gates: a metric, a comparison and a limit (`ppl_ratio<=1.3`, `recovery>=0.95`). A job whose
measured metric breaks a gate still writes its outputs and report (which marks the breach) and exits 3.

Metrics are named as compress.pipeline.metrics names them: `ppl_ratio` (the last eval stage's), or a stage's
own (`eval2.ppl_ratio`); a task's (`accuracy.austen_next_sentence`) or, unqualified, the mean over tasks.
"""
from __future__ import annotations

import math
import operator
import re
from typing import Literal

from pydantic import model_validator

from compress.config import StrictConfig
from compress.errors import BadInput

__all__ = ["Gate", "GateOutcome", "parse_gate", "check_gates", "GateBreach"]

COMPARE = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt}
_GATE = re.compile(r"\s*([A-Za-z_][\w.\-\[\]]*)\s*(<=|>=|<|>)\s*(\S+)\s*")


class Gate(StrictConfig):
    """`metric op limit`; in a recipe a string (`ppl_ratio<=1.3`) or a mapping {metric, op, limit}."""

    metric: str
    op: Literal["<=", ">=", "<", ">"]
    limit: float

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data):
        return parse_gate(data).model_dump() if isinstance(data, str) else data

    def text(self) -> str:
        return f"{self.metric}{self.op}{self.limit!r}"


class GateOutcome(StrictConfig):
    metric: str
    op: str
    limit: float
    measured: float | None
    passed: bool


class GateBreach(Exception):
    """Raised after the outputs are written when a gate is breached; the CLI exits 3 with its lines."""

    def __init__(self, outcomes: list[GateOutcome], report=None):
        self.outcomes, self.report = [o for o in outcomes if not o.passed], report  # report: the RunReport
        super().__init__("; ".join(breach_line(o) for o in self.outcomes))


def parse_gate(text: str) -> Gate:
    found = _GATE.fullmatch(text)
    if not found:
        raise BadInput(f"gate {text!r}: write METRIC<=LIMIT (or >=, <, >), e.g. ppl_ratio<=1.3")
    metric, op, limit = found.groups()
    try:
        value = float(limit)
    except ValueError:
        raise BadInput(f"gate {text!r}: the limit {limit!r} is not a number") from None
    if not math.isfinite(value):
        raise BadInput(f"gate {text!r}: the limit must be a finite number")
    return Gate.model_construct(metric=metric, op=op, limit=value)


def check_gates(gates: list[Gate], metrics: dict[str, float]) -> list[GateOutcome]:
    """Each gate against the measured metrics; a gate on a metric the job did not measure is bad input
    (checked before any work by `require_metrics`, so this is only reached with known names)."""
    outcomes = []
    for gate in gates:
        measured = metrics.get(gate.metric)
        passed = measured is not None and math.isfinite(measured) and COMPARE[gate.op](measured, gate.limit)
        outcomes.append(GateOutcome(metric=gate.metric, op=gate.op, limit=gate.limit, measured=measured, passed=passed))
    return outcomes


def require_metrics(gates: list[Gate], available: set[str]) -> None:
    """Refuse, before any work, a gate on a metric the job will not measure, naming those it will."""
    for gate in gates:
        if gate.metric not in available:
            known = ", ".join(sorted(available)) or "none (add an eval stage)"
            raise BadInput(f"gate {gate.text()}: this job does not measure {gate.metric!r}; it measures: {known}",
                           key="gates")


def breach_line(outcome: GateOutcome) -> str:
    measured = "not measured" if outcome.measured is None else f"{outcome.measured:.6g}"
    return f"gate breached: {outcome.metric} {measured}, limit {outcome.op} {outcome.limit!r}"
