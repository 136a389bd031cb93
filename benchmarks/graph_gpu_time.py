"""GPU wall time of GraphGPS inference over the B3DB scaffold test split: the reference vs the pruned model
(tokens 0.5, heads 0.5, layers 0.25, weights 0.5, fine-tuned), both written by graph_b3db.py.

Reads only plain tensors and safetensors (no RDKit, OGB or qc-b3db needed):
    .graphdata/b3db-test.pt                      featurised test graphs (compress.graph.data.pack)
    .graphdata/b3db-refs/seed0                   the reference checkpoint
    .graphdata/b3db-pruned-combined-ft-seed0     the pruned checkpoint

    python -m benchmarks.graph_gpu_time --json benchmarks/results/graph-gpu-h200.json
    python -m benchmarks.graph_gpu_time --tiny --json /tmp/t.json     # MUTAG, tiny models, any device
CUDA events around one pass over the test set, after warm-up; the median of --repeats passes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks._meta import ROOT, meta

BATCHES = (64, 256)


def _time_pass(model, batch_list, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of one pass over `batch_list`."""
    cuda = batch_list[0].x.is_cuda
    times = []
    with torch.no_grad():
        for step in range(warmup + repeats):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            else:
                import time

                began = time.perf_counter()
            for batch in batch_list:
                model(batch)
            if cuda:
                end.record()
                torch.cuda.synchronize()
                elapsed = start.elapsed_time(end)
            else:
                elapsed = 1000 * (time.perf_counter() - began)
            if step >= warmup:
                times.append(elapsed)
    return statistics.median(times)


def _random_graphs(count: int, seed: int = 0) -> list:
    """Small random graphs with float node and edge features (tiny mode needs no dataset package)."""
    from torch_geometric.data import Data
    from torch_geometric.utils import to_undirected

    generator, graphs = torch.Generator().manual_seed(seed), []
    for i in range(count):
        n = int(torch.randint(5, 20, (1,), generator=generator))
        edges = to_undirected(torch.randint(0, n, (2, 2 * n), generator=generator), num_nodes=n)
        graphs.append(Data(x=torch.rand(n, 7, generator=generator), edge_index=edges,
                           edge_attr=torch.rand(edges.shape[1], 4, generator=generator),
                           pe=torch.rand(n, 20, generator=generator), y=torch.tensor([i % 2]), num_nodes=n))
    return graphs


def _tiny_inputs(where: Path) -> tuple[Path, Path, Path]:
    """Random graphs, a tiny reference and a pruned copy of it (the same kinds of files graph_b3db.py writes)."""
    from compress.graph.checkpoint import save_graph_model
    from compress.graph.data import pack
    from compress.graph.model import GraphGPS, GraphModelConfig
    from compress.graph.prune import GraphPruneSpec, prune_graph_model
    from compress.graph.train import batches

    graphs = _random_graphs(48)
    config = GraphModelConfig(encoder="linear", node_dims=[7], edge_dims=[4], num_classes=2, channels=16, pe_dim=4,
                              heads=[2, 2], head_dim=8, train_epochs=1)
    reference = GraphGPS(config).eval()
    pruned, _, _ = prune_graph_model(reference, GraphPruneSpec(tokens=0.5, heads=0.5, layers=0.5, weights=0.5),
                                     batches(graphs[:32], 16))
    torch.save({"graphs": pack(graphs[32:]), "meta": {}}, where / "test.pt")
    save_graph_model(reference, where / "ref", {"kind": "tiny"})
    save_graph_model(pruned, where / "pruned", {"kind": "tiny"})
    return where / "test.pt", where / "ref", where / "pruned"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--data", default=str(ROOT / ".graphdata" / "b3db-test.pt"))
    parser.add_argument("--reference", default=str(ROOT / ".graphdata" / "b3db-refs" / "seed0"))
    parser.add_argument("--pruned", default=str(ROOT / ".graphdata" / "b3db-pruned-combined-ft-seed0"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    info = meta(argv)
    from compress.graph.checkpoint import load_graph_model
    from compress.graph.data import unpack
    from compress.graph.train import batches

    data, ref_path, pruned_path = Path(args.data), Path(args.reference), Path(args.pruned)
    if args.tiny:
        data, ref_path, pruned_path = _tiny_inputs(Path(tempfile.mkdtemp(prefix="graph-gpu-tiny-")))
        args.repeats = 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    graphs = unpack(torch.load(data, weights_only=True)["graphs"])
    models = {"reference": load_graph_model(ref_path).to(device), "pruned": load_graph_model(pruned_path).to(device)}
    rows = []
    for batch_size in BATCHES:
        batch_list = batches(graphs, batch_size, device=device)
        for name, model in models.items():
            rows.append({"model": name, "batch": batch_size, "graphs": len(graphs),
                         "ms": _time_pass(model, batch_list, args.repeats), "heads": list(model.config.heads),
                         "token_keep": model.config.token_keep})
            print(json.dumps(rows[-1]), flush=True)
    Path(args.json).write_text(json.dumps({"meta": info, "device": str(device), "repeats": args.repeats,
                                           "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
