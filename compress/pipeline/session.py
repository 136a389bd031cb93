"""A session loads the model once, resolves devices in one place, runs a recipe's stages in order on
that model and builds one typed report."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

from compress.pipeline.recipe import Recipe, dump_recipe
from compress.pipeline.registry import STAGES
from compress.pipeline.report import CalibrationReport, Report, StageReport
from compress.provenance import versions

__all__ = ["Progress", "Session", "run_recipe", "versions"]


@dataclass
class Progress:
    """Callbacks the CLI renders; library users may ignore them."""

    stage: Callable[[str], None] = lambda message: None
    layer: Callable[[object, int], None] | None = None


class Session:
    """The loaded model and what the stages share: calibration tokens, held-out tokens, pruning results."""

    def __init__(self, recipe: Recipe, progress: Progress | None = None, force: bool = False, resume: bool = False,
                 resumable: bool = True):
        self.recipe, self.progress, self.force = recipe, progress or Progress(), force
        self.resume, self.resumable = resume, resumable  # resumable: a work folder with checkpoints (pipeline.resume)
        self.work = None
        self.out_dir = None
        self.staging = None  # a stage's own files, published when every stage has succeeded (export.outputs)
        self.model = self.tokenizer = None
        self.device, self.placement = "cpu", None
        self.baselines: dict[str, dict] = {}
        self.permutations, self.permutation_sites, self.pruned_linears = {}, {}, {}
        self.pattern = None
        self._calibration = None
        self._eval_ids: dict = {}
        self._eval_digests: dict = {}
        self.report: Report | None = None
        self.run_report = None  # the whole record (run_report.RunReport), written as report.json into out

    def stage_name(self, config) -> str:
        index = next(i for i, stage in enumerate(self.recipe.stages) if stage is config)
        return self.recipe.stage_names()[index]

    # -- what stages share -------------------------------------------------------------------------
    def calibration(self):
        """The calibration windows (drawn once, shared by every stage that calibrates)."""
        from compress.calibrate.data import calibration_tokens

        if self._calibration is None:
            config = self.recipe.calibrate
            seqlen = self.report.calibration.seqlen
            self.progress.stage(f"reading calibration text ({config.nsamples} × {seqlen} tokens)")
            self._calibration = calibration_tokens(self.tokenizer, config.source(), config.nsamples, seqlen,
                                                   config.seed, bos=config.bos)
            self.report.calibration.used = True
        return self._calibration

    def evaluation_tokens(self, source, max_tokens):
        from compress.calibrate.data import evaluation_tokens

        from compress.defaults.assets import EVALUATION_NOVEL
        from compress.pipeline.run_report import tokens_digest

        key = (source, max_tokens)
        if key not in self._eval_ids:
            self._eval_ids[key] = evaluation_tokens(self.tokenizer, source, max_tokens)
            self._eval_digests[key] = tokens_digest(self._eval_ids[key], source.describe("austen:" + EVALUATION_NOVEL))
        return self._eval_ids[key]

    def record_pruning(self, result, pattern) -> None:
        self.permutations.update(result.permutations)
        self.permutation_sites.update(result.permutation_sites)
        self.pruned_linears.update(result.linears)
        self.pattern = pattern

    def manifest(self) -> dict:
        report = self.report.model_copy(update={"seconds_total": round(time.perf_counter() - self._started, 3),
                                                "out": str(self.out_dir)})
        return report.to_json()

    def recipe_yaml(self) -> str:
        return dump_recipe(self.recipe)

    # -- the run -------------------------------------------------------------------------------------
    def _load(self) -> None:
        from compress.defaults.assets import MODEL_NOTE
        from compress.pipeline.loading import load_placed

        recipe = self.recipe
        self.progress.stage(f"loading {recipe.model or 'the default model (SmolLM2-135M-Instruct)'}")
        loaded = load_placed(recipe, recipe.model)
        self.model, self.tokenizer, self.device, self.placement = (loaded.model, loaded.tokenizer, loaded.device,
                                                                   loaded.placement)
        self.report = Report(
            model=loaded.source, model_note=MODEL_NOTE if recipe.model is None else None,
            dtype=str(next(self.model.parameters()).dtype).replace("torch.", ""), device=self.device,
            device_map={k: str(v) for k, v in getattr(self.model, "hf_device_map", {}).items()}
            if self.placement is not None else None,
            recipe=recipe.to_dict(), versions=versions())
        if recipe.calibrate is not None:
            from compress.calibrate.data import window_bos
            from compress.defaults.assets import CALIBRATION_NOVELS

            c = recipe.calibrate
            limit = getattr(self.model.config, "max_position_embeddings", None) or c.seqlen
            self.report.calibration = CalibrationReport(
                source=c.source().describe("austen:" + "+".join(CALIBRATION_NOVELS)),
                nsamples=c.nsamples, seqlen=min(c.seqlen, limit), seed=c.seed,
                bos=window_bos(self.tokenizer, c.bos) is not None)

    def run(self) -> Report:
        from compress.export import check_output_dir
        from compress.export.outputs import staged

        from compress.pipeline.gates import GateBreach
        from compress.pipeline.resume import resumable
        from compress.pipeline.run_report import write_run_report
        from compress.provenance import now

        self._started, self._started_at = time.perf_counter(), now()
        recipe = self.recipe
        if recipe.out is not None:
            self.out_dir = check_output_dir(recipe.out, self.force, (recipe.model,))
        for config in recipe.stages:
            if STAGES[config.kind].check_outputs:
                STAGES[config.kind].check_outputs(config)
        with resumable(self) as self.work, staged() as self.staging:
            self._run_stages()
            self.report.seconds_total = round(time.perf_counter() - self._started, 3)
            self.report.out = str(self.out_dir) if self.out_dir is not None else None
            self.run_report = self._record()
            if self.out_dir is not None:  # the export stage's folder, renamed into place with the rest
                write_run_report(self.staging.pending_folder(self.out_dir), self.run_report)
        self.staging = None
        if not self.run_report.gates_passed:
            raise GateBreach(self.run_report.gates, self.run_report)
        return self.report

    def _record(self):
        """The run's report.json: the report with digests, seed, machine, provenance, metrics and gates."""
        from compress.pipeline.gates import check_gates
        from compress.pipeline.metrics import measured_metrics
        from compress.pipeline.run_report import Inputs, RunReport, file_digest, provenance, tokens_digest
        from compress.provenance import machine

        calibration = None
        if self._calibration is not None:
            calibration = tokens_digest(self._calibration, self.report.calibration.source)
        report = self.report.to_json()
        metrics = measured_metrics(report["stages"])
        outcomes = check_gates(self.recipe.gates, metrics)
        fields = {name: getattr(self.report, name) for name in type(self.report).model_fields}  # results keep their types
        return RunReport(**fields, kind="run",
                         inputs=Inputs(model=file_digest(self.report.model), calibration=calibration,
                                       evaluation=list(self._eval_digests.values())),
                         seed=self.recipe.calibrate.seed if self.recipe.calibrate is not None else None,
                         machine=machine(), provenance=provenance(), started=self._started_at, metrics=metrics,
                         gates=outcomes, gates_passed=all(o.passed for o in outcomes))

    def _run_stages(self) -> None:
        self._load()
        stages = list(zip(self.recipe.stage_names(), self.recipe.stages))
        for _, config in stages:
            spec = STAGES[config.kind]
            if spec.check:
                spec.check(self, config)
        if self.work is not None:
            self.work.begin(self)  # the fingerprint: saved, or compared with the one a resume continues
        for _, config in stages:
            spec = STAGES[config.kind]
            if spec.prepare:
                spec.prepare(self, config)
        for name, config in stages:
            self.progress.stage(f"{name}: {STAGES[config.kind].summary}")
            started = time.perf_counter()
            result = STAGES[config.kind].run(self, config)
            self.report.stages.append(StageReport(name=name, kind=config.kind,
                                                  seconds=round(time.perf_counter() - started, 3), result=result))


def run_recipe(recipe: Recipe, progress: Progress | None = None, force: bool = False, resume: bool = False) -> Report:
    """Load the recipe's model once, run its stages in order, return the report."""
    return Session(recipe, progress, force, resume).run()
