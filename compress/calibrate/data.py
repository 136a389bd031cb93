"""Text sources for calibration and evaluation, turned into token ids.

A source is the default Jane Austen text, a local .txt/.md file, a .jsonl file (one record a line,
`text_field` holding the text), or a Hugging Face dataset given as NAME[:CONFIG][:SPLIT].

BOS: where the tokenizer itself starts a sequence with a BOS token (it adds one under
add_special_tokens=True), windows start with it, as the model saw text in training:
  calibration  each window of `seqlen` is [BOS] + seqlen−1 text tokens;
  evaluation   `evaluation_tokens` returns the text ids alone; `window_bos(tokenizer)` gives the id that
               `compress.evaluate.perplexity(..., bos_id=)` puts before each window of text.
`bos=False` (CLI --no-bos) cuts windows straight from the text, as before. A tokenizer that adds no BOS
(SmolLM2's) gives the same windows either way.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from compress.errors import BadInput

__all__ = ["TextSource", "read_text", "calibration_tokens", "evaluation_tokens", "window_bos"]


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


def window_bos(tokenizer, bos: bool = True) -> int | None:
    """The id that starts every window: the BOS the tokenizer adds itself, or None (none added, or bos off)."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if not bos or bos_id is None:
        return None
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    special = tokenizer("a", add_special_tokens=True)["input_ids"]
    # compare with the plain ids too: a text whose first token happens to be the BOS id is not an added BOS
    added = len(special) > len(plain) and special[0] == bos_id and special[1 : 1 + len(plain)] == plain
    return bos_id if added else None


def calibration_tokens(tokenizer, source: TextSource, nsamples: int, seqlen: int, seed: int,
                       bos: bool = True) -> torch.Tensor:
    """`nsamples` random windows of `seqlen` tokens, drawn reproducibly from the source; each starts with
    the tokenizer's BOS where it adds one (and `bos` is on), followed by seqlen−1 text tokens."""
    if nsamples < 1 or seqlen < 2:
        raise BadInput(f"need --nsamples >= 1 and --seqlen >= 2 (got {nsamples}, {seqlen})")
    ids = _tokenize(tokenizer, read_text(source, "calibration"))
    bos_id = window_bos(tokenizer, bos)
    text_len = seqlen - (bos_id is not None)
    if ids.numel() <= text_len:
        raise BadInput(f"calibration text has {ids.numel()} tokens, fewer than --seqlen {seqlen}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - text_len, (nsamples,), generator=generator)
    windows = torch.stack([ids[s : s + text_len] for s in starts.tolist()])
    if bos_id is None:
        return windows
    return torch.cat([torch.full((nsamples, 1), bos_id, dtype=windows.dtype), windows], dim=1)


def evaluation_tokens(tokenizer, source: TextSource, max_tokens: int | None = None) -> torch.Tensor:
    """The evaluation text's ids (at most `max_tokens`), no BOS: `perplexity` adds it per window."""
    ids = _tokenize(tokenizer, read_text(source, "evaluation"))
    return ids[:max_tokens] if max_tokens else ids
