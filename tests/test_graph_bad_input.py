"""`compress graph train` / `prune`: numbers torch cannot take (learning rates that are not finite and
positive, seeds and counts out of range) and data too small to split are one line naming the flag, exit 2,
nothing written, before any training."""
import pytest

pytest.importorskip("torch_geometric")

from tests.test_bad_input import HUGE, refused  # noqa: E402


@pytest.mark.parametrize("flag, value", [
    ("--lr", "inf"), ("--lr", "nan"), ("--lr", "-1e-3"), ("--lr", "0"), ("--seed", HUGE), ("--seed", "-1"),
    ("--split-seed", HUGE), ("--epochs", HUGE), ("--batch-size", HUGE), ("--channels", HUGE), ("--layers", HUGE),
    ("--heads", HUGE), ("--dropout", "nan"), ("--dropout", "inf")])
def test_train_numbers(flag, value, tmp_path, monkeypatch):
    # data that does not exist: the number must be refused first, before any data is read
    refused(["graph", "train", "--data", "nowhere.csv", flag, value, "--out", "o", "-q"], tmp_path, monkeypatch, flag)


@pytest.mark.parametrize("flag, value", [("--seed", HUGE), ("--calibration-graphs", HUGE),
                                         ("--finetune-epochs", HUGE), ("--finetune-epochs", "-1"),
                                         ("--tokens", "inf"), ("--weights", "nan")])
def test_prune_numbers(flag, value, tmp_path, monkeypatch):
    refused(["graph", "prune", "nowhere", flag, value, "--out", "o", "-q"], tmp_path, monkeypatch, flag)


def _tiny_tu_folder(folder):
    """Three triangles in TU format: too few graphs for a train/valid/test split."""
    folder.mkdir()
    edges = [(3 * g + a + 1, 3 * g + b + 1) for g in range(3) for a, b in ((0, 1), (1, 2), (2, 0), (1, 0), (2, 1),
                                                                          (0, 2))]
    (folder / "TINY_A.txt").write_text("".join(f"{a}, {b}\n" for a, b in edges))
    (folder / "TINY_graph_indicator.txt").write_text("".join(f"{g + 1}\n" for g in range(3) for _ in range(3)))
    (folder / "TINY_graph_labels.txt").write_text("1\n-1\n1\n")
    (folder / "TINY_node_labels.txt").write_text("".join(f"{i % 2}\n" for i in range(9)))
    (folder / "TINY_edge_labels.txt").write_text("0\n" * len(edges))
    return folder


def test_data_too_small_to_split(tmp_path, monkeypatch):
    data = _tiny_tu_folder(tmp_path.parent / f"{tmp_path.name}-tu")
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path.parent / f"{tmp_path.name}-cache"))
    refused(["graph", "train", "--data", data, "--epochs", 1, "--device", "cpu", "--out", "o", "-q"], tmp_path,
            monkeypatch, "--data", "too few to split")


def test_smiles_csv_too_small_to_split(tmp_path, monkeypatch):
    pytest.importorskip("rdkit")
    pytest.importorskip("ogb")
    data = tmp_path.parent / f"{tmp_path.name}-tiny.csv"
    data.write_text("smiles,label\nCCO,1\nCCN,0\nc1ccccc1,1\n")
    monkeypatch.setenv("COMPRESS_CACHE", str(tmp_path.parent / f"{tmp_path.name}-cache"))
    refused(["graph", "train", "--data", data, "--epochs", 1, "--device", "cpu", "--out", "o", "-q"], tmp_path,
            monkeypatch, "--data", "too few to split")
