"""Graph data that works offline: MUTAG (TU format, from the grakel wheel's test data), B3DB (SMILES in the
qc-b3db wheel, featurised with OGB's smiles2graph), a user's TU-format directory, a CSV of SMILES + label,
or a .pt of packed tensors (`pack`). Every graph gets a random-walk structural encoding (RWSE) in `pe`.

Splits: MUTAG and user TU data are split at random (80/10/10, seeded); molecules by Murcko scaffold
(balanced scaffold split, seeded), so no scaffold is in two splits.
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.util
import io
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from compress.errors import BadInput
from compress.paths import user_path

__all__ = ["GraphData", "load_graphs", "pack", "unpack", "WALK_LENGTH", "mutag_files"]

WALK_LENGTH = 20  # RWSE steps (GraphGPS and GTSP use 20)
B3DB_LABEL = "BBB+/BBB-"


@dataclass
class GraphData:
    """Featurised graphs, split. `encoder` is "atoms" (integer OGB atom/bond features) or "linear"."""

    name: str
    encoder: str
    node_dims: list[int]  # atoms: vocabulary size per feature column; linear: [feature count]
    edge_dims: list[int]
    num_classes: int
    train: list = field(default_factory=list)
    valid: list = field(default_factory=list)
    test: list = field(default_factory=list)
    external: list = field(default_factory=list)  # B3DB's curated external test set

    def __post_init__(self):
        if not (self.train and self.valid and self.test):
            total = len(self.train) + len(self.valid) + len(self.test)
            raise BadInput(f"{self.name}: {total} graphs are too few to split (train {len(self.train)}, valid "
                           f"{len(self.valid)}, test {len(self.test)}; each split needs at least one)", key="data")


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise BadInput(f"graph data needs the {module!r} package: pip install 'compress[graph]'", key="data")


def _with_pe(graph, walk_length: int = WALK_LENGTH):
    from torch_geometric.transforms import AddRandomWalkPE

    return AddRandomWalkPE(walk_length, attr_name="pe")(graph)


# ---------------------------------------------------------------- packing (plain tensors, loads without pickle)


def pack(graphs: list) -> dict[str, torch.Tensor]:
    """Graphs as plain tensors (torch.load(weights_only=True) reads them back; no PyG objects inside)."""
    nodes = torch.tensor([0] + [g.num_nodes for g in graphs]).cumsum(0)
    edges = torch.tensor([0] + [g.edge_index.shape[1] for g in graphs]).cumsum(0)
    return {"x": torch.cat([g.x for g in graphs]), "edge_index": torch.cat([g.edge_index for g in graphs], 1),
            "edge_attr": torch.cat([g.edge_attr for g in graphs]), "pe": torch.cat([g.pe for g in graphs]),
            "y": torch.cat([g.y.view(-1) for g in graphs]), "node_ptr": nodes, "edge_ptr": edges}


def unpack(tensors: dict[str, torch.Tensor]) -> list:
    from torch_geometric.data import Data

    n, e = tensors["node_ptr"].tolist(), tensors["edge_ptr"].tolist()
    return [Data(x=tensors["x"][n[i]:n[i + 1]], edge_index=tensors["edge_index"][:, e[i]:e[i + 1]],
                 edge_attr=tensors["edge_attr"][e[i]:e[i + 1]], pe=tensors["pe"][n[i]:n[i + 1]],
                 y=tensors["y"][i:i + 1], num_nodes=n[i + 1] - n[i]) for i in range(len(n) - 1)]


# ---------------------------------------------------------------- splits


def random_split(count: int, seed: int) -> tuple[list[int], list[int], list[int]]:
    order = list(range(count))
    random.Random(seed).shuffle(order)
    a, b = int(0.8 * count), int(0.9 * count)
    return order[:a], order[a:b], order[b:]


def scaffold_split(smiles: list[str], seed: int) -> tuple[list[int], list[int], list[int]]:
    """Balanced scaffold split: scaffold groups larger than half the test share go to train first, the
    others in a seeded random order; a group never straddles two splits."""
    from rdkit.Chem.Scaffolds.MurckoScaffold import MurckoScaffoldSmiles

    groups: dict[str, list[int]] = {}
    for i, s in enumerate(smiles):
        groups.setdefault(MurckoScaffoldSmiles(smiles=s, includeChirality=False), []).append(i)
    n = len(smiles)
    valid_size, test_size = int(0.1 * n), int(0.1 * n)
    big = sorted((g for g in groups.values() if len(g) > test_size / 2), key=len, reverse=True)
    small = [g for g in groups.values() if len(g) <= test_size / 2]
    random.Random(seed).shuffle(small)
    train, valid, test = [], [], []
    for group in big + small:
        if len(train) + len(group) <= n - valid_size - test_size:
            train += group
        elif len(valid) + len(group) <= valid_size:
            valid += group
        else:
            test += group
    return train, valid, test


# ---------------------------------------------------------------- sources


def mutag_files() -> Path:
    _need("grakel")
    spec = importlib.util.find_spec("grakel")
    folder = Path(spec.origin).parent / "tests" / "data" / "MUTAG"
    if not (folder / "MUTAG_A.txt").is_file():
        raise BadInput(f"the installed grakel has no MUTAG test data at {folder}", key="data")
    return folder


def _tu_dataset(folder: Path, name: str, cache: Path):
    """A TU-format folder (NAME_A.txt, ...) copied into a PyG TUDataset raw folder under `cache`."""
    from torch_geometric.datasets import TUDataset

    raw = cache / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for path in folder.glob(f"{name}_*.txt"):
        if not (raw / path.name).is_file():
            shutil.copyfile(path, raw / path.name)
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):  # "Processing..."
            return TUDataset(str(cache), name)
    except Exception as exc:  # a malformed user folder
        raise BadInput(f"{folder}: not a readable TU-format dataset ({type(exc).__name__}: {exc})", key="data")


def _tu_graphs(folder: Path, cache: Path, seed: int) -> GraphData:
    names = sorted(p.name[: -len("_A.txt")] for p in folder.glob("*_A.txt"))
    if len(names) != 1:
        raise BadInput(f"{folder}: expected one TU dataset (NAME_A.txt, NAME_graph_indicator.txt, ...), "
                       f"found {len(names)}", key="data")
    name = names[0]
    digest = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:12]
    dataset = _tu_dataset(folder, name, cache / f"tu-{digest}")
    graphs = []
    for g in dataset:
        if g.x is None or g.edge_attr is None:
            raise BadInput(f"{folder}: graphs need node labels and edge labels (NAME_node_labels.txt, "
                           "NAME_edge_labels.txt)", key="data")
        graphs.append(_with_pe(g.clone()))
    ys = sorted({int(g.y) for g in graphs})
    if len(ys) < 2:
        raise BadInput(f"{folder}: graph labels take fewer than two values", key="data")
    train, valid, test = random_split(len(graphs), seed)
    pick = lambda idx: [graphs[i] for i in idx]  # noqa: E731
    return GraphData(name.lower(), "linear", [graphs[0].x.shape[1]], [graphs[0].edge_attr.shape[1]],
                     max(ys) + 1, pick(train), pick(valid), pick(test))


def _molecule(smiles: str, label: int):
    from ogb.utils import smiles2graph
    from torch_geometric.data import Data

    try:
        g = smiles2graph(smiles)
    except Exception:  # RDKit could not parse it
        return None
    if g["num_nodes"] == 0:
        return None
    data = Data(x=torch.from_numpy(g["node_feat"]).long(), edge_index=torch.from_numpy(g["edge_index"]).long(),
                edge_attr=torch.from_numpy(g["edge_feat"]).long(), y=torch.tensor([label]), num_nodes=g["num_nodes"])
    return _with_pe(data)


def _molecules(rows: list[tuple[str, int]], cache_file: Path) -> tuple[list, list[str]]:
    """Featurised molecules (cached as packed tensors); rows RDKit cannot parse are dropped."""
    if cache_file.is_file():
        stored = torch.load(cache_file, weights_only=True)
        return unpack(stored["graphs"]), [rows[i][0] for i in stored["rows"].tolist()]
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")  # unparsable SMILES are dropped, not shouted about
    graphs, kept = [], []
    for i, (smiles, label) in enumerate(rows):
        g = _molecule(smiles, label)
        if g is not None:
            graphs.append(g)
            kept.append(i)
    if not graphs:
        raise BadInput("no SMILES could be parsed", key="data")
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"graphs": pack(graphs), "rows": torch.tensor(kept)}, cache_file)
    return graphs, [rows[i][0] for i in kept]


def _b3db_rows(file: Path) -> list[tuple[str, int]]:
    with file.open(encoding="utf-8-sig", newline="") as handle:
        return [(r["SMILES"], int(r[B3DB_LABEL] == "BBB+")) for r in csv.DictReader(handle, delimiter="\t")]


def _atom_dims() -> tuple[list[int], list[int]]:
    from ogb.utils.features import get_atom_feature_dims, get_bond_feature_dims

    return list(get_atom_feature_dims()), list(get_bond_feature_dims())


def _smiles_graphs(name: str, rows, external_rows, cache: Path, seed: int) -> GraphData:
    for module in ("rdkit", "ogb"):
        _need(module)
    digest = hashlib.sha256(repr(rows).encode()).hexdigest()[:12]
    graphs, smiles = _molecules(rows, cache / f"{name}-{digest}-rwse{WALK_LENGTH}.pt")
    train, valid, test = scaffold_split(smiles, seed)
    external = []
    if external_rows:
        external, _ = _molecules(external_rows, cache / f"{name}-external-rwse{WALK_LENGTH}.pt")
    nodes, edges = _atom_dims()
    pick = lambda idx: [graphs[i] for i in idx]  # noqa: E731
    return GraphData(name, "atoms", nodes, edges, 2, pick(train), pick(valid), pick(test), external)


def _csv_rows(path: Path) -> list[tuple[str, int]]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            table = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read {path}: {exc}", key="data")
    if not table or [c.strip().lower() for c in table[0][:2]] != ["smiles", "label"]:
        raise BadInput(f"{path}: expected a header row 'smiles,label'", key="data")
    rows = []
    for number, row in enumerate(table[1:], 2):
        if len(row) < 2 or row[1].strip() not in ("0", "1"):
            raise BadInput(f"{path}, line {number}: expected SMILES and a label 0 or 1", key="data")
        rows.append((row[0].strip(), int(row[1])))
    if len({label for _, label in rows}) < 2:
        raise BadInput(f"{path}: labels take fewer than two values", key="data")
    return rows


def _packed(path: Path, seed: int) -> GraphData:
    try:
        stored = torch.load(path, weights_only=True)
        meta = stored["meta"]
        graphs = unpack(stored["graphs"])
    except Exception as exc:
        raise BadInput(f"{path}: not a packed graph file of compress ({type(exc).__name__})", key="data")
    train, valid, test = random_split(len(graphs), seed)
    pick = lambda idx: [graphs[i] for i in idx]  # noqa: E731
    return GraphData(path.stem, meta["encoder"], meta["node_dims"], meta["edge_dims"], meta["num_classes"],
                     pick(train), pick(valid), pick(test))


def load_graphs(source: str, seed: int = 0, cache: Path | None = None) -> GraphData:
    """`source`: "mutag", "b3db", a TU-format directory, a CSV of smiles,label or a packed .pt."""
    _need("torch_geometric")
    if cache is None:
        from compress.defaults.assets import cache_dir

        cache = cache_dir() / "graphs"
    if source == "mutag":
        return _tu_graphs(mutag_files(), cache, seed)
    if source == "b3db":
        _need("B3DB")
        folder = Path(importlib.util.find_spec("B3DB").origin).parent
        return _smiles_graphs("b3db", _b3db_rows(folder / "B3DB_classification.tsv"),
                              _b3db_rows(folder / "B3DB_classification_external.tsv"), cache, seed)
    path = user_path(source)
    if path.is_dir():
        return _tu_graphs(path, cache, seed)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _smiles_graphs(f"csv-{path.stem}", _csv_rows(path), [], cache, seed)
    if path.is_file() and path.suffix.lower() == ".pt":
        return _packed(path, seed)
    raise BadInput(f"unknown data {source!r}: give mutag, b3db, a TU-format directory, a .csv of smiles,label "
                   "or a .pt of packed graphs", key="data")
