"""The JSON Schema of report.json, generated from the typed report and every registered stage's result, so
it cannot drift from what the code writes. `python -m compress.pipeline.report_schema` rewrites the
committed file; tests/test_run_report.py checks it is current and validates every report the tests write."""
from __future__ import annotations

import json
import typing

from compress.pipeline.run_report import SCHEMA_PATH

__all__ = ["SCHEMA_PATH", "build_schema", "stage_result_types"]


def stage_result_types() -> dict[str, type]:
    """{stage kind: its result model}, read from each registered stage's run() annotation."""
    import compress.pipeline.stages  # noqa: F401  (registers the stage kinds)
    from compress.pipeline.registry import SESSION_STAGES

    every = {kind: spec for stages in SESSION_STAGES.values() for kind, spec in stages.items()}
    return {kind: typing.get_type_hints(spec.run)["return"] for kind, spec in sorted(every.items())}


def build_schema() -> dict:
    from pydantic.json_schema import models_json_schema

    from compress.pipeline.run_report import RunReport

    results = stage_result_types()
    models = [RunReport, *dict.fromkeys(results.values())]
    refs, top = models_json_schema([(m, "serialization") for m in models], ref_template="#/$defs/{model}")
    defs = top["$defs"]
    name = {model: refs[(model, "serialization")]["$ref"].rsplit("/", 1)[1] for model in models}
    stage = defs["StageReport"]
    stage["properties"]["result"] = {"type": "object"}
    stage["allOf"] = [{"if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
                       "then": {"properties": {"result": {"$ref": f"#/$defs/{name[model]}"}}}}
                      for kind, model in results.items()]
    root = dict(defs.pop(name[RunReport]))
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://compress.invalid/schemas/report-v1.schema.json", **root, "$defs": defs}


def main() -> None:
    SCHEMA_PATH.write_text(json.dumps(build_schema(), indent=2, sort_keys=True) + "\n")
    print(SCHEMA_PATH)


if __name__ == "__main__":
    main()
