"""Zero-shot accuracy through lm-evaluation-harness (the optional extra `zeroshot`), over a model in memory.

`zero_shot(model, tokenizer, tasks)` wraps the model as it is (pruned, factorized, with Double Sparsity
attention installed around the call) in lm-eval's HFLM and returns the dict `lm_eval.simple_evaluate`
returns, less its per-item `samples`, its `pretty_env_info` dump of the machine, and anything JSON cannot hold. The offline task
(compress.zero_shot.next_sentence) is written as an lm-eval task YAML and a JSON-lines file in a temporary
folder and loaded from there with lm-eval's TaskManager; with only offline tasks asked for, the run is
offline (HF_HUB_OFFLINE, HF_DATASETS_OFFLINE). Any other name is one of lm-eval's own tasks (hellaswag,
arc_easy, ...), whose data comes from the Hugging Face hub.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import tempfile
from pathlib import Path
from unittest import mock

from compress.errors import BadInput
from compress.zero_shot import next_sentence

__all__ = ["OFFLINE_TASKS", "INSTALL_HINT", "require_lm_eval", "check_tasks", "write_offline_task", "zero_shot",
           "accuracy", "summary_lines"]

OFFLINE_TASKS = (next_sentence.TASK,)
INSTALL_HINT = "pip install 'compress[zeroshot]'"
TASK_DIR = "<task dir>"  # stands for the temporary task folder in the returned configs
BATCH = 8  # requests per forward: lm-eval pads them on the right, which a causal model's earlier positions ignore
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
DROPPED = ("samples", "pretty_env_info")  # bulky: per-item records, and a dump of the machine report.json has


def require_lm_eval() -> None:
    """Refuse in one line, naming the extra, when lm-evaluation-harness is not installed."""
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise BadInput(f"zero-shot tasks need lm-evaluation-harness (the zeroshot extra): {INSTALL_HINT}") from None


def write_offline_task(folder: Path, text: str | None = None) -> Path:
    """persuasion_next_sentence as lm-eval reads a task: `<task>.yaml` and `<task>.jsonl` in `folder`."""
    import yaml

    if text is None:
        from compress.defaults.assets import EVALUATION_NOVEL, austen_novels

        text = austen_novels()[EVALUATION_NOVEL]
    data = folder / f"{next_sentence.TASK}.jsonl"
    data.write_text("".join(json.dumps(item) + "\n" for item in next_sentence.build_items(text)))
    config = {
        "task": next_sentence.TASK,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(folder / "cache")},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "target_delimiter": " ",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                        {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1.0, "chance": 1 / next_sentence.CHOICES, "seed": next_sentence.SEED},
    }
    path = folder / f"{next_sentence.TASK}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _plain(value, folder: str):
    """`value` as JSON holds it: the task folder's path replaced by TASK_DIR, what JSON cannot hold dropped
    (callables, tensors) and non-finite floats as None."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            item = _plain(item, folder)
            if item is not _DROP:
                out[str(key)] = item
        return out
    if isinstance(value, (list, tuple)):
        return [item for item in (_plain(v, folder) for v in value) if item is not _DROP]
    if isinstance(value, str):
        return value.replace(folder, TASK_DIR)
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        return _plain(value.item(), folder)
    return _DROP


_DROP = object()


@contextlib.contextmanager
def _quiet_lm_eval():
    """lm-eval and datasets log warnings and draw tqdm bars on stderr (lm-eval passes disable=False itself):
    both are silenced for the call."""
    from tqdm import std

    loggers = [logging.getLogger(name) for name in ("lm_eval", "datasets", "evaluate")]
    levels = [logger.level for logger in loggers]
    draw = std.tqdm.__init__

    def hidden(self, *args, **kwargs):
        draw(self, *args, **{**kwargs, "disable": True})

    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with mock.patch.object(std.tqdm, "__init__", hidden):
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def zero_shot(model, tokenizer, tasks: list[str], limit: int | None = None, device: str = "cpu",
              double_sparsity=None, context: int | None = None, batch_size: int = BATCH,
              log_samples: bool = False) -> dict:
    """lm-eval's results for `tasks` on `model` as it is in memory (module docstring), run on `device`;
    `limit`: the first `limit` items of each task. `double_sparsity` (attention.config.DoubleSparsity): with
    sparse attention, a fractional token budget being that share of `context`. `log_samples` keeps lm-eval's
    per-item samples (tests read them)."""
    import torch

    from compress.evaluate import on_device

    require_lm_eval()
    offline = all(task in OFFLINE_TASKS for task in tasks)
    with tempfile.TemporaryDirectory(prefix="compress-zero-shot-") as folder, _quiet_lm_eval(), \
            mock.patch.dict(os.environ, _OFFLINE_ENV if offline else {}), on_device(model, torch.device(device)), \
            _attention(model, double_sparsity, context):
        if any(task in OFFLINE_TASKS for task in tasks):
            write_offline_task(Path(folder))
        raw = _evaluate(model, tokenizer, tasks, limit, batch_size, log_samples, folder, offline)
        return _plain({k: v for k, v in raw.items() if k not in DROPPED or (log_samples and k == "samples")}, folder)


def _attention(model, settings, context: int | None):
    if settings is None:
        return contextlib.nullcontext()
    from compress.attention.evaluation.runtime import sparse_attention

    return sparse_attention(model, settings, context or 1024)


def check_tasks(tasks: list[str]) -> None:
    """Before any work: lm-eval is installed and every name is a task (lm-eval's index is read only for names
    that are not offline tasks)."""
    require_lm_eval()
    if not all(task in OFFLINE_TASKS for task in tasks):
        with _quiet_lm_eval():
            _check_known(_task_manager(None, offline=False), tasks)


def _task_manager(folder: str | None, offline: bool):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=folder, include_defaults=not offline)


def _check_known(manager, tasks: list[str]) -> None:
    known = set(manager.all_tasks) | set(OFFLINE_TASKS)
    unknown = [task for task in tasks if task not in known]
    if unknown:
        raise BadInput(f"unknown zero-shot task {unknown[0]!r}: choose {', '.join(OFFLINE_TASKS)} (offline) or one "
                       "of lm-eval's own tasks (lm-eval ls tasks), which need the Hugging Face hub")


def _evaluate(model, tokenizer, tasks, limit, batch_size, log_samples, folder: str, offline: bool) -> dict:
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    manager = _task_manager(folder, offline)
    _check_known(manager, tasks)
    # a copy: HFLM sets a pad token on the tokenizer it is given
    lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=batch_size)
    try:
        # seeds None: lm-eval leaves the global RNGs alone (multiple choice draws nothing)
        return lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                       log_samples=log_samples, random_seed=None, numpy_random_seed=None,
                                       torch_random_seed=None)
    except (ConnectionError, OSError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise BadInput(f"could not load the data of {', '.join(tasks)} ({first}); lm-eval's own tasks download "
                       f"from the Hugging Face hub, offline only {', '.join(OFFLINE_TASKS)} runs") from exc


def accuracy(results: dict, task: str) -> dict:
    """acc and acc_norm of one task with lm-eval's standard errors, and the chance level where known."""
    row = results["results"][task]
    out = {key: row.get(f"{key},none") for key in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")}
    out["items"] = results.get("n-samples", {}).get(task, {}).get("effective")
    out["chance"] = 1 / next_sentence.CHOICES if task in OFFLINE_TASKS else None
    return out


def summary_lines(after: dict, before: dict | None = None) -> list[str]:
    """One line per task for the CLI: acc and acc_norm ± lm-eval's standard error, before → after where the
    model as loaded was scored too, and the chance level where known."""
    def text(acc: dict, key: str) -> str:
        return "—" if acc[key] is None else f"{acc[key]:.3f} ± {acc[f'{key}_stderr'] or 0:.3f}"

    lines = []
    for task in after.get("results", {}):
        now = accuracy(after, task)
        then = accuracy(before, task) if before and task in before.get("results", {}) else None
        scores = ", ".join(f"{key} {text(then, key) + ' → ' if then else ''}{text(now, key)}"
                           for key in ("acc", "acc_norm"))
        chance = f", chance {now['chance']:.0%}" if now["chance"] is not None else ""
        lines.append(f"zero-shot {task} ({now['items']} items{chance}): {scores}")
    return lines
