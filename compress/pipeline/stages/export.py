"""The export stage: write the session's model to the recipe's `out` (plain HF or compressed N:M), with
compression.json (the report so far) and recipe.yaml (the recipe as run)."""
from __future__ import annotations

from typing import Literal

from compress.config import StrictConfig
from compress.pipeline.registry import StageSpec, register
from compress.pipeline.report import StageResult

__all__ = ["ExportStage", "ExportResult"]


class ExportStage(StrictConfig):
    kind: Literal["export"] = "export"
    name: str | None = None
    format: Literal["hf", "compressed"] = "hf"
    """hf: a plain checkpoint, zeros in place; compressed: N:M values + bit masks, loaded by compress.load()."""


class ExportResult(StageResult):
    format: str
    out: str
    carried_permutations: int = 0


def _check(session, config: ExportStage) -> None:
    from compress.errors import BadInput
    from compress.model.placement import has_offloaded

    if config.format == "compressed" and has_offloaded(session.model):
        raise BadInput("the compressed export cannot read offloaded weights yet: use format hf, or a device map "
                       "without cpu/disk entries", key="export.format")


def _run(session, config: ExportStage) -> ExportResult:
    from compress.export import save_checkpoint
    from compress.export.compressed import save_compressed

    out = session.out_dir
    session.progress.stage(f"writing {out}")
    files = {"recipe.yaml": session.recipe_yaml()}
    carried = dict(session.permutations)
    exporter = getattr(session, "exporter", None)  # set by a stage whose model needs its own writer (factorize)
    if exporter is not None:
        exporter(session, out, session.manifest(), files)
    elif config.format == "compressed":
        from compress.model.roles import HeadLayout
        from compress.permute import fold_into_model

        if carried:  # folding changes the model in place; it computes the same function
            carried = fold_into_model(session.model, carried, session.permutation_sites,
                                      HeadLayout.of(session.model.config))
        save_compressed(session.model, session.tokenizer, out, session.manifest(), session.pattern,
                        list(session.pruned_linears), carried, session.force, extra_files=files)
    else:
        save_checkpoint(session.model, session.tokenizer, out, session.manifest(), session.force,
                        extra_tensors=carried, extra_files=files)
    return ExportResult(format=config.format, out=str(out), carried_permutations=len(carried))


SPEC = register(StageSpec(kind="export", config=ExportStage, run=_run, check=_check,
                          summary="write the model: a plain HF checkpoint or the compressed N:M format",
                          flags={"format": "--export"}))
