"""GTSP-style post-training pruning of GraphGPS on B3DB (blood-brain-barrier permeability, scaffold split).

Trains (or reuses) several reference models that differ only in their training seed, then prunes each
along every dimension alone, all combined, with and without a recovery fine-tune, by importance and at
random, and records ROC-AUC (OGB's ogbg-molhiv evaluator) on the scaffold test split and on B3DB's
external set, structural FLOPs (torch.utils.flop_counter) and nonzero-weight FLOPs, and CPU wall time.

    python -m benchmarks.graph_b3db --models 5 --epochs 12 --out benchmarks/results/graph-b3db.json
    python -m benchmarks.graph_b3db --tiny --out /tmp/g.json      # MUTAG, tiny models, seconds

Reference checkpoints are kept under --refs (default .graphdata/b3db-refs, ignored by git) and reused when
present; the featurised test split is written to .graphdata/b3db-test.pt for the GPU timing script.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks._meta import ROOT, meta


def reference_model(args, seed: int, log) -> Path:
    """The reference checkpoint of `seed` under --refs, trained first if it is not there."""
    from compress.graph.checkpoint import CONFIG_FILE
    from compress.graph.reference import ModelShape, train_reference

    Path(args.refs).mkdir(parents=True, exist_ok=True)
    path = Path(args.refs) / f"seed{seed}"
    while args.wait and not (path / CONFIG_FILE).is_file():  # another process (--phase train) is training it
        time.sleep(20)
    if not (path / CONFIG_FILE).is_file():
        log(f"training reference seed {seed}")
        shape = ModelShape(channels=args.channels, layers=args.layers, heads=args.heads, pe_dim=args.channels // 4)
        train_reference(args.data, path, shape, epochs=args.epochs, seed=seed, device="cpu", log=log,
                        command=meta()["command"])
    return path


CONFIGS = [  # name, spec fields, fine-tune
    ("tokens 0.5", {"tokens": 0.5}, False),
    ("heads 0.5", {"heads": 0.5}, False),
    ("layers 0.25", {"layers": 0.25}, False),
    ("weights 0.5", {"weights": 0.5}, False),
    ("combined", {"tokens": 0.5, "heads": 0.5, "layers": 0.25, "weights": 0.5}, False),
    ("combined + fine-tune", {"tokens": 0.5, "heads": 0.5, "layers": 0.25, "weights": 0.5}, True),
]


def auc_fast(labels, scores) -> float:
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    positive = labels == 1
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def paired_bootstrap(labels, reference: list, pruned: list, draws: int, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean over models of AUC(pruned) - AUC(reference), in points, resampling test
    molecules (the same draw for both sides) and models."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n, models, deltas = len(labels), len(reference), []
    while len(deltas) < draws:
        idx, which = rng.integers(0, n, n), rng.integers(0, models, models)
        if labels[idx].min() == labels[idx].max():
            continue
        deltas.append(np.mean([auc_fast(labels[idx], pruned[m][idx]) - auc_fast(labels[idx], reference[m][idx])
                               for m in which]))
    low, high = np.percentile(deltas, [2.5, 97.5])
    return 100 * float(low), 100 * float(high)


def _scores(model, batch_list):
    from compress.graph.train import scores_and_labels

    logits, labels, _ = scores_and_labels(model, batch_list)
    return logits.softmax(-1)[:, 1].numpy(), labels.numpy()


def _row(name, seed, random, model, test, external, reference_flops, wall=None):
    from compress.graph.job import measure

    result, ext = measure(model, test), measure(model, external) if external else None
    row = {"config": name, "model_seed": seed, "random": random, "auc": result["auc"], "accuracy": result["accuracy"],
           "loss": result["loss"], "structural_flops": result["structural_flops"],
           "nonzero_flops": result["nonzero_flops"], "message_passing_flops": result["message_passing_flops"],
           "structural_cut": 1 - result["structural_flops"] / reference_flops,
           "nonzero_cut": 1 - result["nonzero_flops"] / reference_flops, "heads": list(model.config.heads),
           "external_auc": ext["auc"] if ext else None, "external_accuracy": ext["accuracy"] if ext else None}
    if wall is not None:
        row["cpu_seconds"] = wall
    return row


class Measurement:
    """Data, batches and the rows and scores gathered so far, one reference model at a time."""

    def __init__(self, args):
        from compress.graph.data import load_graphs, pack
        from compress.graph.job import EVAL_BATCH
        from compress.graph.train import batches

        self.args = args
        self.graphs = graphs = load_graphs(args.data, 0)
        self.test = batches(graphs.test, EVAL_BATCH)
        self.external = batches(graphs.external, EVAL_BATCH) if graphs.external else []
        self.calibration = batches(graphs.train[:args.calibration_graphs], 64)
        self.store = Path(args.refs).parent
        torch.save({"graphs": pack(graphs.test), "meta": {
            "encoder": graphs.encoder, "node_dims": graphs.node_dims, "edge_dims": graphs.edge_dims,
            "num_classes": graphs.num_classes}}, self.store / f"{args.data}-test.pt")
        self.rows, self.scores, self.labels, self.seeds = [], {}, None, []

    def add(self, seed: int, path: Path, log) -> None:
        from compress.graph.checkpoint import load_graph_model, save_graph_model
        from compress.graph.flops import wall_time
        from compress.graph.job import finetune_cap
        from compress.graph.prune import GraphPruneSpec, prune_graph_model
        from compress.graph.train import TrainConfig, train

        args, test, external = self.args, self.test, self.external
        reference = load_graph_model(path)
        self.scores[("reference", False, seed)], self.labels = _scores(reference, test)
        timed = seed == 0
        base = _row("reference", seed, False, reference, test, external, 1, wall_time(reference, test, 3) if timed else None)
        flops = base["structural_flops"]
        base.update(structural_cut=0.0, nonzero_cut=1 - base["nonzero_flops"] / flops)
        self.rows.append(base)
        log(f"seed {seed}: reference ROC-AUC {base['auc']:.4f}")
        for name, fields, finetune in CONFIGS:
            for random in (False, True):
                model, masks, _ = prune_graph_model(reference, GraphPruneSpec(**fields, random=random, seed=seed),
                                                    self.calibration)
                if finetune:
                    epochs = finetune_cap(reference.config.train_epochs)
                    train(model, self.graphs.train, TrainConfig(epochs=epochs, lr=3e-4, seed=seed), masks=masks)
                self.scores[(name, random, seed)] = _scores(model, test)[0]
                row = _row(name, seed, random, model, test, external, flops,
                           wall_time(model, test, 3) if timed and not random else None)
                self.rows.append(row)
                log(f"seed {seed}: {name}{' random' if random else ''}: ROC-AUC {row['auc']:.4f}, "
                    f"structural cut {row['structural_cut']:.3f}")
                if timed and not random and name == "combined + fine-tune":
                    save_graph_model(model, self.store / f"{args.data}-pruned-combined-ft-seed0",
                                     {"kind": "graph-prune", "spec": fields}, force=True)
        self.seeds.append(seed)

    def intervals(self) -> list[dict]:
        out = []
        for name, _, _ in CONFIGS:
            for random in (False, True):
                low, high = paired_bootstrap(self.labels, [self.scores[("reference", False, s)] for s in self.seeds],
                                             [self.scores[(name, random, s)] for s in self.seeds], self.args.draws)
                out.append({"config": name, "random": random, "delta_auc_low": low, "delta_auc_high": high})
        return out


def load_reference_config(path: Path) -> dict:
    from compress.graph.checkpoint import CONFIG_FILE

    return json.loads((path / CONFIG_FILE).read_text())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--refs", default=str(ROOT / ".graphdata" / "b3db-refs"))
    parser.add_argument("--data", default="b3db")
    parser.add_argument("--phase", choices=["train", "all"], default="all")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (the machine is shared)")
    parser.add_argument("--calibration-graphs", type=int, default=1024)
    parser.add_argument("--draws", type=int, default=1000, help="bootstrap draws")
    parser.add_argument("--wait", action="store_true", help="wait for references that a --phase train run writes")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    log = lambda m: print(time.strftime("%H:%M:%S"), m, file=sys.stderr, flush=True)  # noqa: E731
    info = meta(argv)
    if args.tiny:  # MUTAG, two tiny models, a few epochs: checks the script, measures nothing
        tiny = Path(tempfile.mkdtemp(prefix="graph-tiny-"))
        args.data, args.models, args.epochs, args.channels, args.layers = "mutag", 2, 3, 16, 2
        args.refs, args.draws, args.calibration_graphs = str(tiny / "refs"), 20, 32
    if args.phase == "train":
        for seed in range(args.models):
            reference_model(args, seed, log)
        return
    measurement = None
    for seed in range(args.models):  # the result file is rewritten after each model: a cut-short run still counts
        path = reference_model(args, seed, log)
        measurement = measurement or Measurement(args)
        measurement.add(seed, path, log)
        reference = load_reference_config(path)
        result = {"meta": info, "data": args.data, "models": len(measurement.seeds), "epochs": reference["train_epochs"],
                  "channels": reference["channels"], "layers": len(reference["heads"]), "heads": reference["heads"][0],
                  "eval_batch": 64, "calibration_graphs": args.calibration_graphs, "bootstrap_draws": args.draws,
                  "rows": measurement.rows, "intervals": measurement.intervals()}
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
