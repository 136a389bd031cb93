"""One pruning job on a saved checkpoint (`compress graph prune`): load, prune, optionally fine-tune,
measure (test metrics, both FLOP counts, CPU wall time) and save."""
from __future__ import annotations

import math
import time

from compress.config import check_count, check_positive
from compress.errors import BadInput

__all__ = ["prune_checkpoint", "finetune_cap", "measure", "EVAL_BATCH"]

EVAL_BATCH = 64  # graphs per batch when measuring (attention runs on padded dense batches: FLOPs depend on it)


def finetune_cap(train_epochs: int) -> int:
    """A recovery fine-tune may run at most 10% of the reference's training epochs (at least one)."""
    return max(1, math.floor(0.1 * train_epochs))


def measure(model, batch_list: list) -> dict:
    from compress.graph.flops import count_flops
    from compress.graph.train import evaluate

    return {**evaluate(model, batch_list), **count_flops(model, batch_list)}


def prune_checkpoint(checkpoint: str, spec, data: str | None = None, calibration_graphs: int = 1024,
                     finetune_epochs: int = 0, finetune_lr: float = 3e-4, out: str | None = None, force: bool = False,
                     device: str = "auto", log=None, command: str = "", recipe: dict | None = None,
                     record=None) -> dict:
    """Prune the model at `checkpoint` with `spec` (a GraphPruneSpec); calibration graphs are the first
    `calibration_graphs` of the training split of `data` (default: the data the model was trained on).
    `compress graph prune` and a graph recipe's graph_prune stage both run this; `recipe` (the recipe as run)
    goes into the report; `record(folder, report, checkpoint, data, graphs, device, started, seconds)` writes
    more files into the output folder while it is built."""
    from compress.graph.checkpoint import load_graph_model, save_graph_model
    from compress.graph.data import load_graphs
    from compress.graph.prune import prune_graph_model
    from compress.graph.train import TrainConfig, batches, pick_device, train
    from compress.version import __version__

    from compress.provenance import now

    job_started, started_at = time.perf_counter(), now()
    log = log or (lambda message: None)
    check_count(calibration_graphs, "calibration_graphs")
    check_count(finetune_epochs, "finetune_epochs", minimum=0)
    check_positive(finetune_lr, "finetune_lr", maximum=1.0)
    if out is not None:
        from compress.export.atomic import check_output_dir

        out_path = check_output_dir(out, force, (checkpoint,))
    reference = load_graph_model(checkpoint)
    cap = finetune_cap(reference.config.train_epochs)
    if not 0 <= finetune_epochs <= cap:
        raise BadInput(f"finetune epochs must be in [0, {cap}] (10% of the reference's "
                       f"{reference.config.train_epochs} training epochs)", key="finetune_epochs")
    run_on = pick_device(device)
    graphs = load_graphs(data or reference.config.data, reference.config.split_seed)
    if graphs.encoder != reference.config.encoder or graphs.node_dims != reference.config.node_dims \
            or graphs.edge_dims != reference.config.edge_dims:
        raise BadInput(f"the data's features ({graphs.encoder}, {graphs.node_dims}) do not match the model's "
                       f"({reference.config.encoder}, {reference.config.node_dims})", key="data")
    reference.to(run_on)
    calibration = batches(graphs.train[:calibration_graphs], 64, device=run_on)
    test = batches(graphs.test, EVAL_BATCH, device=run_on)
    log("pruning")
    started = time.perf_counter()
    model, masks, report = prune_graph_model(reference, spec, calibration)
    report["prune_seconds"] = round(time.perf_counter() - started, 2)
    if finetune_epochs:
        log(f"recovery fine-tune, {finetune_epochs} epoch(s)")
        train(model, graphs.train, TrainConfig(epochs=finetune_epochs, lr=finetune_lr, seed=spec.seed), masks=masks,
              device=run_on)
    report.update(kind="graph-prune", compress=__version__, checkpoint=str(checkpoint), spec=dict(spec.__dict__),
                  finetune_epochs=finetune_epochs, command=command,
                  reference=measure(reference, test), pruned=measure(model, test))
    if recipe is not None:
        report["recipe"] = recipe
    if graphs.external:
        report["external"] = {"reference": measure(reference, batches(graphs.external, EVAL_BATCH, device=run_on)),
                              "pruned": measure(model, batches(graphs.external, EVAL_BATCH, device=run_on))}
    model.cpu()
    if out is not None:
        report["out"] = str(out_path)
        used = graphs.train[:calibration_graphs] + list(graphs.test) + list(graphs.external or [])
        finish = None
        if record is not None:  # e.g. report.json (compress.pipeline.graph_record), inside the folder being built
            def finish(folder):
                record(folder, report, str(checkpoint), str(data or reference.config.data), used, str(run_on),
                       started_at, time.perf_counter() - job_started)
        save_graph_model(model, out, report, force, (checkpoint,), finish=finish)
    return report
