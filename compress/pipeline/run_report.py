"""report.json: the whole record of one job, written into its output directory.

What ran (the resolved recipe), on what (digests of the model's files and of the exact calibration and
evaluation tokens), with what (versions, seed, device, the code's commit and whether it had uncommitted
changes), how long each stage took, what each stage measured (per layer where it works per layer), the
named metrics and the gates' outcomes. Its JSON Schema is `compress/schemas/report-v1.schema.json`
(`python -m compress.pipeline.report_schema` rewrites it; a test checks it is current).
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field

from compress.pipeline.gates import GateOutcome
from compress.pipeline.report import Report, ReportModel

__all__ = ["RunReport", "SCHEMA_VERSION", "SCHEMA_PATH", "REPORT_FILE", "file_digest", "tokens_digest", "tensors_digest",
           "provenance", "write_run_report"]

SCHEMA_VERSION = 1
REPORT_FILE = "report.json"
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schemas" / "report-v1.schema.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".json", ".model", ".txt")


class Digest(ReportModel):
    source: str
    sha256: str | None  # None: nothing local to read (a hub id)
    files: int = 0
    bytes: int = 0


class TokensDigest(ReportModel):
    source: str
    sha256: str  # of the token ids as int64, in the order used
    tokens: int
    stage: str | None = None


class Inputs(ReportModel):
    model: Digest
    calibration: TokensDigest | None = None
    evaluation: list[TokensDigest] = Field(default_factory=list)
    data: Digest | None = None
    """Data that is not text (a graph job's graphs): its source and the sha256 of the tensors used."""
    models: list[Digest] = Field(default_factory=list)
    """compress eval of several models: each, in order (`model` is the first)."""


class Provenance(ReportModel):
    commit: str | None
    state: Literal["clean", "dirty", "unknown"]
    """clean or dirty: the checkout that holds the running code had no / some uncommitted changes to
    compress/; unknown: the code does not run from a git checkout (an installed package)."""
    command: str


class RunReport(Report):
    """The session's report (model, device, calibration, the resolved recipe, versions, stages with their
    timings and per-layer results) and what makes it a record: inputs' digests, seed, machine, provenance,
    metrics and gates."""

    schema_name: Literal["compress-report"] = Field("compress-report", alias="schema")
    schema_version: Literal[1] = SCHEMA_VERSION
    kind: str  # what wrote it: run (recipes, prune, factorize), eval, graph
    inputs: Inputs
    seed: int | None
    machine: dict[str, Any]
    provenance: Provenance
    started: str
    metrics: dict[str, float]
    gates: list[GateOutcome]
    gates_passed: bool

    model_config = ConfigDict(extra="forbid", populate_by_name=True, json_schema_serialization_defaults_required=True)

    def to_json(self) -> dict:
        return self.model_dump(mode="json", by_alias=True)


def file_digest(source: str | None) -> Digest:
    """sha256 over a file, or over a folder's model files (names and contents, in name order)."""
    path = Path(source) if source else None
    if path is None or not path.exists():
        return Digest(source=str(source), sha256=None)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()
                                                   and p.suffix in WEIGHT_SUFFIXES and not p.name.startswith("."))
    h, total = hashlib.sha256(), 0
    for file in files:
        if path.is_dir():
            h.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
                total += len(chunk)
    return Digest(source=str(path), sha256=h.hexdigest(), files=len(files), bytes=total)


def tokens_digest(ids, source: str, stage: str | None = None) -> TokensDigest:
    import torch

    flat = ids.detach().to("cpu", torch.int64).contiguous().reshape(-1)
    return TokensDigest(source=source, sha256=hashlib.sha256(flat.numpy().tobytes()).hexdigest(),
                        tokens=int(flat.numel()), stage=stage)


def tensors_digest(tensors, source: str) -> Digest:
    """sha256 over tensors' dtypes, shapes and values, in order (e.g. the graphs a graph job used)."""
    import torch

    h, total = hashlib.sha256(), 0
    for tensor in tensors:
        flat = tensor.detach().cpu().contiguous()
        h.update(f"{flat.dtype}{tuple(flat.shape)}".encode())
        data = flat.reshape(-1).view(torch.uint8).numpy().tobytes() if flat.numel() else b""
        h.update(data)
        total += len(data)
    return Digest(source=source, sha256=h.hexdigest(), bytes=total)


def provenance() -> Provenance:
    """The running code's commit and whether compress/ had uncommitted changes, said truthfully: unknown
    where the code is not a git checkout."""
    from compress.provenance import code_root, git

    command = " ".join(["compress", *sys.argv[1:]]) if Path(sys.argv[0]).name == "compress" else " ".join(sys.argv)
    commit = git("rev-parse", "HEAD") if (code_root() / ".git").exists() else None
    status = git("status", "--porcelain", "--", "compress") if commit else None
    state = "unknown" if commit is None or status is None else ("dirty" if status else "clean")
    return Provenance(commit=commit, state=state, command=command)


def validate_against_schema(document: dict) -> None:
    """Validate with jsonschema where COMPRESS_VALIDATE_REPORTS=1 (the test suite sets it, so every report
    the tests produce is checked against the committed schema)."""
    if os.environ.get("COMPRESS_VALIDATE_REPORTS") != "1":
        return
    import json

    import jsonschema

    jsonschema.validate(document, json.loads(SCHEMA_PATH.read_text()))


def write_run_report(folder: Path, report: RunReport) -> Path:
    """report.json into `folder` (a directory being built: it is renamed into place with the rest)."""
    import json

    document = report.to_json()
    validate_against_schema(document)
    path = folder / REPORT_FILE
    # a non-finite perplexity is written as Infinity (Python's json reads it; strict JSON has no such number)
    path.write_text(json.dumps(document, indent=2) + "\n")
    return path
