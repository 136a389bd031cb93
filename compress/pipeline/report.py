"""One typed report per run: the CLI tables, `--json` and `compression.json` all render from it."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny

__all__ = ["ReportModel", "StageResult", "StageReport", "CalibrationReport", "Report"]


class ReportModel(BaseModel):
    # every field is written, defaults included: report.json's schema requires them all
    model_config = ConfigDict(extra="forbid", json_schema_serialization_defaults_required=True)


class StageResult(ReportModel):
    """What a stage measured; each stage kind subclasses it."""


class StageReport(ReportModel):
    name: str
    kind: str
    seconds: float
    result: SerializeAsAny[StageResult]


class CalibrationReport(ReportModel):
    source: str
    nsamples: int
    seqlen: int
    seed: int
    bos: bool = False  # windows start with the tokenizer's BOS
    used: bool = False


class Report(ReportModel):
    model: str
    model_note: str | None = None  # e.g. how the default model was made
    dtype: str
    device: str
    device_map: dict[str, str] | None = None
    calibration: CalibrationReport | None = None
    stages: list[StageReport] = Field(default_factory=list)
    recipe: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    seconds_total: float = 0.0
    out: str | None = None

    def stage(self, kind: str) -> StageReport | None:
        """The last stage of `kind`, if any."""
        return next((s for s in reversed(self.stages) if s.kind == kind), None)

    def to_json(self) -> dict:
        return self.model_dump(mode="json")
