"""Training, recovery fine-tuning and evaluation of graph classifiers."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from compress.errors import BadInput

__all__ = ["TrainConfig", "batches", "train", "evaluate", "pick_device", "scores_and_labels", "roc_auc"]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-5
    seed: int = 0


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda"):
        raise BadInput(f"device must be auto, cpu or cuda, got {device!r}", key="device")
    if device == "cuda" and not torch.cuda.is_available():
        raise BadInput("device cuda: no CUDA device is available", key="device")
    return torch.device(device)


def batches(graphs: list, batch_size: int, shuffle: bool = False, seed: int = 0, device="cpu") -> list:
    """Collated batches (a seeded order when shuffling), moved to `device`."""
    from torch_geometric.data import Batch

    order = list(range(len(graphs)))
    if shuffle:
        order = torch.randperm(len(graphs), generator=torch.Generator().manual_seed(seed)).tolist()
    return [Batch.from_data_list([graphs[i] for i in order[s:s + batch_size]]).to(device)
            for s in range(0, len(order), batch_size)]


def train(model, train_graphs: list, config: TrainConfig, valid_graphs: list | None = None, masks: dict | None = None,
          device="cpu", log=None):
    """Adam on cross-entropy; with `valid_graphs`, the weights of the epoch with the best validation
    ROC-AUC (binary) or loss are kept. `masks` ({Linear: bool mask}) are re-applied after every step,
    so pruned weights stay zero during a recovery fine-tune."""
    torch.manual_seed(config.seed)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    valid = batches(valid_graphs, 256, device=device) if valid_graphs else None
    best, best_state = None, None
    for epoch in range(config.epochs):
        model.train()
        finite = torch.ones((), dtype=torch.bool, device=device)  # read once an epoch: no host sync per step
        for batch in batches(train_graphs, config.batch_size, shuffle=True, seed=config.seed * 100_003 + epoch,
                             device=device):
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(batch), batch.y.view(-1))
            loss.backward()
            finite &= torch.isfinite(loss.detach())
            optimizer.step()
            if masks:
                with torch.no_grad():
                    for linear, mask in masks.items():
                        linear.weight.mul_(mask)
        if not bool(finite):
            raise BadInput(f"training diverged in epoch {epoch + 1}: the loss is not finite (learning rate "
                           f"{config.lr:g}; a lower one may help)")
        if valid is not None:
            result = evaluate(model, valid)
            value = result["auc"] if result.get("auc") is not None else -result["loss"]
            if best is None or value > best:
                best, best_state = value, copy.deepcopy(model.state_dict())
            if log:
                log(f"epoch {epoch + 1}/{config.epochs}: valid loss {result['loss']:.4f}"
                    + (f", ROC-AUC {result['auc']:.4f}" if result.get("auc") is not None else ""))
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model


@torch.no_grad()
def scores_and_labels(model, batch_list: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, labels and the mean cross-entropy over `batch_list`."""
    model.eval()
    logits = torch.cat([model(b).float().cpu() for b in batch_list])
    if not torch.isfinite(logits).all():
        raise BadInput("the model's outputs are not finite (training diverged? a lower learning rate may help)")
    labels = torch.cat([b.y.view(-1).cpu() for b in batch_list])
    return logits, labels, F.cross_entropy(logits, labels)


def roc_auc(labels: torch.Tensor, scores: torch.Tensor) -> float | None:
    """ROC-AUC by OGB's evaluator for ogbg-molhiv (None when only one class is present)."""
    from ogb.graphproppred import Evaluator

    if labels.unique().numel() < 2:
        return None
    result = Evaluator("ogbg-molhiv").eval({"y_true": labels.view(-1, 1).numpy(), "y_pred": scores.view(-1, 1).numpy()})
    return float(result["rocauc"])


def evaluate(model, batch_list: list) -> dict:
    logits, labels, loss = scores_and_labels(model, batch_list)
    result = {"loss": float(loss), "accuracy": float((logits.argmax(-1) == labels).float().mean())}
    if logits.shape[1] == 2:
        result["auc"] = roc_auc(labels, logits.softmax(-1)[:, 1])
    return result
