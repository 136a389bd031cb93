"""`compress graph`: train a GraphGPS reference and prune its tokens, heads, layers and weights (GTSP)."""
from __future__ import annotations

from typing import Optional

import typer

from compress.cli.common import exit_codes, out, print_json

__all__ = ["graph_app", "execute_graph"]

graph_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        help="Graph transformers (GraphGPS): train a reference, prune it post-training (GTSP's "
                             "four dimensions). Needs: pip install 'compress[graph]'.")

DATA_HELP = "mutag | b3db | a TU-format directory | a .csv with header smiles,label | a packed .pt of graphs."
FLAGS = {"data": "--data", "out": "--out", "epochs": "--epochs", "lr": "--lr", "layers": "--layers",
         "heads": "--heads", "pe_dim": "--channels", "dropout": "--dropout", "device": "--device",
         "checkpoint": "CHECKPOINT", "tokens": "--tokens", "weights": "--weights", "weight_method": "--weight-method",
         "weight_pattern": "--weight-pattern", "pattern": "--weight-pattern",
         "sparsity": "--weights", "finetune_epochs": "--finetune-epochs",
         "calibration_graphs": "--calibration-graphs", "channels": "--channels", "seed": "--seed",
         "split_seed": "--split-seed", "batch_size": "--batch-size"}

TRAIN_EXAMPLES = """
Examples:

  compress graph train --data mutag --epochs 50 --out ./gps-mutag

  compress graph train --data b3db --channels 64 --layers 4 --heads 4 --out ./gps-b3db
"""

PRUNE_EXAMPLES = """
Examples:

  compress graph prune ./gps-b3db --tokens 0.5 --heads 0.5 --layers 0.25 --weights 0.5 --out ./gps-b3db-pruned

  compress graph prune ./gps-b3db --heads 0.5 --finetune-epochs 1 --json

  compress graph prune ./gps-b3db --weight-pattern 2:4 --weight-method wanda --random   # the random baseline
"""


def _flag_of(key: str) -> str | None:
    return FLAGS.get(key.rsplit(".", 1)[-1])


@graph_app.command("train", epilog=TRAIN_EXAMPLES)
def train(
    data: str = typer.Option("mutag", help=DATA_HELP),
    out_dir: Optional[str] = typer.Option(None, "--out", help="Write the checkpoint here (model.safetensors + graph.json)."),
    epochs: int = typer.Option(30, help="Training epochs (the weights of the best validation epoch are kept)."),
    channels: int = typer.Option(64, help="Hidden width."),
    layers: int = typer.Option(4, help="GPS layers."),
    heads: int = typer.Option(4, help="Attention heads per layer (must divide --channels)."),
    dropout: float = typer.Option(0.0, help="Dropout."),
    batch_size: int = typer.Option(64, help="Graphs per batch."),
    lr: float = typer.Option(1e-3, help="AdamW learning rate."),
    seed: int = typer.Option(0, help="Seed for initialisation and batch order."),
    split_seed: int = typer.Option(0, help="Seed of the train/valid/test split."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    force: bool = typer.Option(False, help="Replace --out if it holds an earlier output of compress."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Train a GraphGPS graph classifier (GINE message passing + global attention, RWSE) as the reference."""
    with exit_codes(_flag_of):
        from compress.cli.common import err
        from compress.graph.reference import ModelShape, train_reference

        shape = ModelShape(channels=channels, layers=layers, heads=heads, pe_dim=max(1, channels // 4), dropout=dropout)
        _, report = train_reference(data, out_dir, shape, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                                    split_seed=split_seed, device=device, force=force,
                                    log=None if quiet else err.print, command=_command())
        if as_json:
            print_json(report)
        else:
            _show("test", report["test"])
            if "external" in report:
                _show("external", report["external"])
            if out_dir is not None:
                out.print(f"saved {report['out']}", soft_wrap=True)


@graph_app.command("prune", epilog=PRUNE_EXAMPLES)
def prune(
    checkpoint: str = typer.Argument(..., help="A checkpoint written by compress graph train (or prune)."),
    tokens: float = typer.Option(0.0, help="Fraction of each graph's nodes kept out of global attention."),
    heads: float = typer.Option(0.0, help="Fraction of attention heads removed from every layer."),
    layers: float = typer.Option(0.0, help="Fraction of layers whose global attention is removed."),
    weights: float = typer.Option(0.0, help="Unstructured: fraction of each Linear row's weights zeroed."),
    weight_pattern: Optional[str] = typer.Option(None, help="N:M weight sparsity instead of --weights (e.g. 2:4)."),
    weight_method: str = typer.Option("magnitude", help="magnitude | wanda | ria | sparsegpt."),
    random: bool = typer.Option(False, "--random", help="Choose at random (the baseline) instead of by importance."),
    seed: int = typer.Option(0, help="Seed of the random choices and the fine-tune."),
    recalibrate: bool = typer.Option(True, "--recalibrate/--no-recalibrate",
                                     help="Re-estimate the BatchNorm statistics on the calibration graphs after pruning."),
    data: Optional[str] = typer.Option(None, help=DATA_HELP + " Default: the data the model was trained on."),
    calibration_graphs: int = typer.Option(1024, help="Training graphs used to score importance and re-estimate the norms."),
    finetune_epochs: int = typer.Option(0, help="Recovery fine-tune epochs (at most 10% of the reference's)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    out_dir: Optional[str] = typer.Option(None, "--out", help="Write the pruned checkpoint here."),
    force: bool = typer.Option(False, help="Replace --out if it holds an earlier output of compress."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output."),
) -> None:
    """Prune a trained GraphGPS: tokens, heads, layers (attention blocks) and weights; 0 leaves one alone."""
    with exit_codes(_flag_of):
        from compress.cli.common import err
        from compress.graph.job import prune_checkpoint
        from compress.graph.prune import GraphPruneSpec

        spec = GraphPruneSpec(tokens=tokens, heads=heads, layers=layers, weights=weights, weight_method=weight_method,
                              weight_pattern=weight_pattern, random=random, seed=seed,
                              recalibrate=recalibrate)
        spec.pattern  # a bad N:M pattern fails here, before anything is loaded
        from compress.pipeline.stages.graph_prune import graph_recorder

        report = prune_checkpoint(checkpoint, spec, data, calibration_graphs, finetune_epochs, out=out_dir,
                                  force=force, device=device, log=None if quiet else err.print, command=_command(),
                                  record=graph_recorder())
        if as_json:
            print_json(report)
        else:
            _show_pruned(report)


def execute_graph(recipe, force: bool, as_json: bool, quiet: bool, resume: bool = False) -> None:
    """`compress run` of a graph recipe (compress.pipeline.graph_session): the same job as graph prune."""
    from compress.cli.common import progress
    from compress.errors import BadInput
    from compress.pipeline.graph_session import run_graph_recipe

    if resume:
        raise BadInput("--resume: a graph recipe runs in one step, with no checkpoints to resume from")

    from compress.cli.render import print_gates
    from compress.pipeline.gates import GateBreach, check_gates
    from compress.pipeline.metrics import measured_metrics

    breach = None
    with progress(quiet or as_json) as hooks:
        try:
            report = run_graph_recipe(recipe, hooks, force)
        except GateBreach as caught:
            breach, report = caught, caught.report
    if as_json:
        print_json(report.to_json())
    else:
        for stage in report.stages:
            out.print(f"{stage.name}:", soft_wrap=True)
            _show_pruned(stage.result.model_dump(mode="json"))
        print_gates(check_gates(recipe.gates, measured_metrics(report.to_json()["stages"])))
    if breach is not None:
        raise breach


def _show_pruned(report: dict) -> None:
    for name in ("reference", "pruned"):
        _show(name, report[name])
    cut = 1 - report["pruned"]["structural_flops"] / report["reference"]["structural_flops"]
    out.print(f"structural FLOPs cut {100 * cut:.1f}%; heads per layer {report['heads']}, "
              f"token keep {report['token_keep']:g}", soft_wrap=True)
    if report.get("out") is not None:
        out.print(f"saved {report['out']}", soft_wrap=True)


def _show(name: str, result: dict) -> None:
    auc = result.get("auc")
    line = f"{name}: loss {result['loss']:.4f}, accuracy {result['accuracy']:.4f}"
    line += f", ROC-AUC {auc:.4f}" if auc is not None else ""
    if "structural_flops" in result:
        line += f", structural FLOPs {result['structural_flops']:,}, nonzero FLOPs {result['nonzero_flops']:,}"
    out.print(line, soft_wrap=True)


def _command() -> str:
    import shlex
    import sys

    return shlex.join(["compress", *sys.argv[1:]])
