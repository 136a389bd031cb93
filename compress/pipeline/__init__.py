"""One pipeline for every method: typed stage configs, recipes, and a session that runs them on one model.

    from compress.pipeline import read_recipe, run_recipe
    report = run_recipe(read_recipe("recipes/wanda-2of4.yaml", sets=["calibrate.nsamples=32"]))
"""
from compress.pipeline.recipe import Recipe, dump_recipe, validate_recipe
from compress.pipeline.recipe_file import read_recipe
from compress.pipeline.registry import STAGES, StageSpec, register
from compress.pipeline.report import Report, StageReport, StageResult
from compress.pipeline.session import Progress, Session, run_recipe

__all__ = ["Recipe", "dump_recipe", "validate_recipe", "read_recipe", "STAGES", "StageSpec", "register", "Report",
           "StageReport", "StageResult", "Progress", "Session", "run_recipe"]
