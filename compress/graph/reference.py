"""Training a reference GraphGPS checkpoint (`compress graph train`)."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from compress.config import check_count, check_positive, check_seed
from compress.errors import BadInput

__all__ = ["ModelShape", "train_reference"]

MAX_SHAPE = {"channels": 65536, "layers": 1024, "heads": 65536}  # past these a GraphGPS cannot be allocated anyway


class ModelShape:
    """Width and depth of a new model (checked before any data is read)."""

    def __init__(self, channels: int = 64, layers: int = 4, heads: int = 4, pe_dim: int = 16, dropout: float = 0.0):
        for key, value in (("channels", channels), ("layers", layers), ("heads", heads)):
            check_count(value, key, maximum=MAX_SHAPE[key])
        if channels % heads:
            raise BadInput(f"heads ({heads}) must divide channels ({channels})", key="heads")
        if not 0 < pe_dim < channels:
            raise BadInput(f"pe_dim must be between 1 and channels - 1, got {pe_dim}", key="pe_dim")
        if not 0.0 <= dropout < 1.0:
            raise BadInput(f"dropout must be in [0, 1), got {dropout}", key="dropout")
        self.channels, self.layers, self.heads, self.pe_dim, self.dropout = channels, layers, heads, pe_dim, dropout


def train_reference(data: str, out: str | Path | None, shape: ModelShape | None = None, epochs: int = 30,
                    batch_size: int = 64, lr: float = 1e-3, seed: int = 0, split_seed: int = 0, device: str = "auto",
                    force: bool = False, log=None, command: str = "") -> tuple[object, dict]:
    """Train GraphGPS on `data` (see graph.data.load_graphs), keep the epoch with the best validation
    score, evaluate on the test split (and the external set, if any); save to `out` when given."""
    import torch

    from compress.graph.checkpoint import save_graph_model
    from compress.graph.data import WALK_LENGTH, load_graphs
    from compress.graph.model import GraphGPS, GraphModelConfig
    from compress.graph.train import TrainConfig, batches, evaluate, pick_device, train
    from compress.version import __version__

    check_count(epochs, "epochs")
    check_count(batch_size, "batch_size")
    check_positive(lr, "lr", maximum=1.0)
    check_seed(seed, "seed")
    check_seed(split_seed, "split_seed")
    if out is not None:
        from compress.export.atomic import check_output_dir

        check_output_dir(out, force)
    shape = shape or ModelShape()
    run_on = pick_device(device)
    graphs = load_graphs(data, split_seed)
    config = GraphModelConfig(encoder=graphs.encoder, node_dims=graphs.node_dims, edge_dims=graphs.edge_dims,
                              num_classes=graphs.num_classes, channels=shape.channels, pe_dim=shape.pe_dim,
                              walk_length=WALK_LENGTH, heads=[shape.heads] * shape.layers,
                              head_dim=shape.channels // shape.heads, dropout=shape.dropout, train_epochs=epochs,
                              data=data, split_seed=split_seed)
    torch.manual_seed(seed)
    model = GraphGPS(config)
    started = time.perf_counter()
    settings = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    train(model, graphs.train, settings, graphs.valid, device=run_on, log=log)
    seconds = time.perf_counter() - started
    report = {"kind": "graph-train", "compress": __version__, "data": data, "split_seed": split_seed,
              "graphs": {"train": len(graphs.train), "valid": len(graphs.valid), "test": len(graphs.test),
                         "external": len(graphs.external)},
              "train": asdict(settings), "device": str(run_on), "train_seconds": round(seconds, 1),
              "test": evaluate(model, batches(graphs.test, 256, device=run_on)), "command": command}
    if graphs.external:
        report["external"] = evaluate(model, batches(graphs.external, 256, device=run_on))
    model.cpu()
    if out is not None:
        report["out"] = str(save_graph_model(model, out, report, force))
    return model, report
