"""Text sources for calibration and evaluation, turned into token ids.

A source is the default Jane Austen text, a local .txt/.md file, a .jsonl file (one record a line,
`text_field` holding the text), or a Hugging Face dataset given as NAME[:CONFIG][:SPLIT].
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from compress.errors import BadInput

__all__ = ["TextSource", "read_text", "calibration_tokens", "evaluation_tokens"]


@dataclass(frozen=True)
class TextSource:
    path: str | None = None  # local .txt/.md/.jsonl file
    dataset: str | None = None  # NAME[:CONFIG][:SPLIT]
    text_field: str = "text"

    def describe(self, default: str) -> str:
        if self.path:
            return f"file:{self.path}"
        if self.dataset:
            return f"dataset:{self.dataset}"
        return default


def _read_file(path: str, text_field: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"{path}: no such text file")
    try:
        raw = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text") from exc
    if p.suffix != ".jsonl":
        return raw
    texts = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInput(f"{path}:{number}: not valid JSON") from exc
        if not isinstance(record, dict) or text_field not in record:
            raise BadInput(f"{path}:{number}: no field {text_field!r} (set --text-field)")
        texts.append(str(record[text_field]))
    return "\n\n".join(texts)


def _read_dataset(spec: str, text_field: str, default_split: str) -> str:
    try:
        import datasets
    except ImportError as exc:
        raise BadInput("--dataset needs the `datasets` package: pip install 'compress[datasets]'") from exc
    name, config, split = (spec.split(":") + [None, None])[:3]
    try:
        data = datasets.load_dataset(name, config or None, split=split or default_split)
    except Exception as exc:  # the hub raises many types; all mean "could not get it"
        raise BadInput(f"could not load dataset {spec!r}: {str(exc).splitlines()[0][:200]}") from exc
    if text_field not in data.column_names:
        raise BadInput(f"dataset {spec!r} has no column {text_field!r} (columns: {', '.join(data.column_names)})")
    return "\n\n".join(str(t) for t in data[text_field])


def read_text(source: TextSource, purpose: str) -> str:
    """The text of a source; the default is Austen's calibration novels or the held-out one."""
    if source.path:
        return _read_file(source.path, source.text_field)
    if source.dataset:
        return _read_dataset(source.dataset, source.text_field, "train" if purpose == "calibration" else "test")
    from compress.defaults.assets import CALIBRATION_NOVELS, EVALUATION_NOVEL, austen_novels

    novels = austen_novels()
    titles = CALIBRATION_NOVELS if purpose == "calibration" else (EVALUATION_NOVEL,)
    return "\n\n".join(novels[t] for t in titles)


def _tokenize(tokenizer, text: str) -> torch.Tensor:
    ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def calibration_tokens(tokenizer, source: TextSource, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """`nsamples` random windows of `seqlen` tokens, drawn reproducibly from the source."""
    if nsamples < 1 or seqlen < 2:
        raise BadInput(f"need --nsamples >= 1 and --seqlen >= 2 (got {nsamples}, {seqlen})")
    ids = _tokenize(tokenizer, read_text(source, "calibration"))
    if ids.numel() <= seqlen:
        raise BadInput(f"calibration text has {ids.numel()} tokens, fewer than --seqlen {seqlen}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=generator)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


def evaluation_tokens(tokenizer, source: TextSource, max_tokens: int | None = None) -> torch.Tensor:
    ids = _tokenize(tokenizer, read_text(source, "evaluation"))
    return ids[:max_tokens] if max_tokens else ids
