"""`compress run RECIPE.yaml|-`: validate a recipe (ours or llm-compressor's) and run it on one loaded model."""
from __future__ import annotations

from typing import List, Optional

import typer
from typer.core import TyperCommand

from compress.cli.common import exit_codes, out, print_json, progress

__all__ = ["run", "execute", "RunCommand"]

HELP = """Run a recipe: a model, a calibration source, stages in order, an output.

\b
  model: ./Llama-3-8B            # optional (default SmolLM2-135M-Instruct)
  calibrate: {nsamples: 128, seqlen: 2048}
  stages:
    - prune: {method: sparsegpt, pattern: "2:4", permute: heuristic}
    - eval: {context: 1024}
    - export: {format: compressed}
  out: ./llama-2of4

\b
llm-compressor recipes (SparseGPTModifier, WandaPruningModifier) run too:
staged, as a flat list of modifiers, or a saved recipe.yaml.
A recipe with kind: graph prunes a GraphGPS (compress graph prune).
Address settings with --set: prune.pattern=6:8 (a stage's name or kind),
stages.0.damp=0.1 (its index), calibrate.nsamples=64, model=./other.
Every key of every stage kind is listed below.
"""

GATE_HELP = ("Fail the job (exit 3, outputs still written) unless METRIC<=LIMIT (or >=, <, >) holds, e.g. "
             "ppl_ratio<=1.3, recovery>=0.95, accuracy>=0.4; repeatable; added to the recipe's gates.")


RESUME_HELP = ("Continue a run that was killed where it stopped: the layers it finished come from the checkpoints in "
               "OUT.partial (refused, naming it, if the model, data, recipe or versions differ; --force starts over).")


class RunCommand(TyperCommand):
    """`compress run`'s help ends with every recipe key, generated from the configs when --help asks for it
    (importing them at start-up would cost every command the stage modules' imports)."""

    def format_epilog(self, ctx, formatter) -> None:
        super().format_epilog(ctx, formatter)
        from compress.pipeline.recipe_help import recipe_reference

        for section in recipe_reference():
            with formatter.section(section.title):
                formatter.write_dl(section.rows)


def run(
    recipe: str = typer.Argument(..., help="Recipe YAML file, or - to read it from standard input."),
    model: Optional[str] = typer.Argument(None, help="Model to run it on (overrides the recipe's model)."),
    out_dir: Optional[str] = typer.Option(None, "--out", help="Output directory (overrides the recipe's out)."),
    sets: Optional[List[str]] = typer.Option(None, "--set", help="Override a setting: KEY=VALUE, e.g. prune.pattern=6:8."),
    force: bool = typer.Option(False, help="Replace --out if it holds an earlier output of compress."),
    gates: Optional[List[str]] = typer.Option(None, "--gate", metavar="METRIC<=LIMIT", help=GATE_HELP),
    resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print the resolved recipe; load nothing, write nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    with exit_codes():
        from compress.pipeline.recipe_file import read_recipe

        resolved = read_recipe(recipe, list(sets or []), model, out_dir)
        show_or_execute(with_gates(resolved, gates), dry_run, force, as_json, quiet, resume=resume)


run.__doc__ = HELP


def with_gates(recipe, gates: list[str] | None):
    """The recipe with the --gate flags added to its gates (checked against what it measures)."""
    if not gates:
        return recipe
    from compress.pipeline.recipe import validate_config

    data = recipe.to_dict()
    data["gates"] = data.get("gates", []) + list(gates)
    return validate_config(type(recipe), data, label=lambda path: "--gate" if path[:1] == ("gates",) else
                           ".".join(map(str, path)))


def execute_flags(data: dict, dry_run: bool, force: bool, as_json: bool, quiet: bool, resume: bool = False) -> None:
    """A command's flags as recipe data (None = not given): validate, then print it or run it."""
    from compress.cli.flags import label_for_cli
    from compress.pipeline.recipe import validate_recipe

    show_or_execute(validate_recipe(_drop_none(data), label=label_for_cli), dry_run, force, as_json, quiet, resume=resume)


def show_or_execute(recipe, dry_run: bool, force: bool, as_json: bool, quiet: bool, resume: bool = False) -> None:
    if dry_run:
        from compress.pipeline.recipe import dump_recipe

        out.print(dump_recipe(recipe), end="", soft_wrap=True)
        return
    execute(recipe, force, as_json, quiet, resume)


def _drop_none(data):
    if isinstance(data, dict):
        return {k: _drop_none(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [_drop_none(v) for v in data]
    return data


def execute(recipe, force: bool, as_json: bool, quiet: bool, resume: bool = False) -> None:
    if getattr(recipe, "session", "llm") == "graph":
        from compress.cli.graph import execute_graph

        return execute_graph(recipe, force, as_json, quiet, resume)
    from compress.cli.render import print_run_report
    from compress.pipeline.session import Session

    from compress.pipeline.gates import GateBreach

    breach = None
    with progress(quiet or as_json) as hooks:
        session = Session(recipe, hooks, force, resume)
        try:
            session.run()
        except GateBreach as caught:
            breach = caught
    report = session.run_report
    if as_json:
        print_json(report.to_json())
    else:
        print_run_report(report)
    if breach is not None:
        raise breach
