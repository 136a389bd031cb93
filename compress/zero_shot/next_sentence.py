"""persuasion_next_sentence: a 4-way multiple-choice next-sentence task built from Austen's Persuasion,
the held-out novel (compress.defaults.assets.EVALUATION_NOVEL), so it runs with no dataset download.

Construction (deterministic; `build_items(text)` with the defaults gives the shipped task):
  1. The novel from its "Chapter 1" heading on; paragraphs are split at blank lines, each paragraph's
     whitespace collapsed to single spaces; the "Chapter N" headings count chapters and are dropped.
  2. Each paragraph is cut into sentences after `.`, `!` or `?` (and any closing quotes) where the next
     word starts with a capital or an opening quote, except after a title (Mr., Mrs., Capt., ...) or an
     initial.
  3. Candidate targets: every sentence with at least one sentence before it in its paragraph and
     MIN_WORDS to MAX_WORDS words. Its context is the up to CONTEXT_SENTENCES sentences just before it in
     that paragraph, joined by single spaces, so `context + " " + target` is a stretch of the
     (whitespace-collapsed) novel.
  4. Distractors: three sentences of MIN_WORDS to MAX_WORDS words from other chapters, chosen for matched
     length: of the NEAREST sentences closest to the target in characters, three are drawn with
     random.Random(seed + item index), never the target's own text or each other's.
  5. The four choices are shuffled with the same generator; `gold` is the target's position. With more than
     `items` candidates, `items` of them are taken evenly spaced through the novel.

Chance is 1/4 (25%). lm-eval scores each choice by the sum of its tokens' log-probabilities after the
context and a space (acc), and by that sum over the choice's length in characters (acc_norm).
"""
from __future__ import annotations

import random
import re

__all__ = ["TASK", "CHOICES", "SEED", "ITEMS", "paragraphs", "sentences", "build_items"]

TASK = "persuasion_next_sentence"
CHOICES = 4
SEED = 1234
ITEMS = 500
MIN_WORDS, MAX_WORDS = 6, 40
CONTEXT_SENTENCES = 3
NEAREST = 20

_TITLES = {"Mr", "Mrs", "Ms", "Dr", "St", "Esq", "Capt", "Col", "Lieut", "Adm", "Gen", "Messrs", "Rev"}
_END = re.compile(r"[.!?]['\")]*(?=\s+[\"'(]?[A-Z])")
_HEADING = re.compile(r"Chapter \d+")


def paragraphs(text: str) -> list[tuple[int, str]]:
    """(chapter number, paragraph) from the first chapter heading on, whitespace collapsed."""
    start = text.find("Chapter 1\n")
    chapter, out = 0, []
    for block in re.split(r"\n\s*\n", text[max(start, 0):]):
        paragraph = re.sub(r"\s+", " ", block).strip()
        if _HEADING.fullmatch(paragraph):
            chapter += 1
        elif paragraph:
            out.append((chapter, paragraph))
    return out


def sentences(paragraph: str) -> list[str]:
    """The paragraph's sentences, in order; joined by single spaces they give the paragraph back."""
    out, begin = [], 0
    for end in _END.finditer(paragraph):
        word = paragraph[begin:end.start()].rsplit(" ", 1)[-1].lstrip("\"'(")
        if paragraph[end.start()] == "." and (word in _TITLES or re.fullmatch(r"[A-Z]", word)):
            continue
        out.append(paragraph[begin:end.end()].strip())
        begin = end.end()
    rest = paragraph[begin:].strip()
    return out + [rest] if rest else out


def _words(sentence: str) -> int:
    return len(sentence.split())


def _nearest_in_length(texts: list[str], lengths, chapters: dict[str, set], target: str, chapter: int) -> list[str]:
    """The NEAREST texts closest to `target` in characters (ties: by text), from chapters other than `chapter`."""
    import numpy as np

    out = []
    for j in np.argsort(np.abs(lengths - len(target)), kind="stable"):  # texts are sorted: ties go by text
        text = texts[j]
        if text != target and chapter not in chapters[text]:
            out.append(text)
            if len(out) == NEAREST:
                break
    return out


def build_items(text: str, seed: int = SEED, items: int = ITEMS) -> list[dict]:
    """The task's items (module docstring): {"id", "chapter", "context", "choices", "gold"}."""
    import numpy as np

    split = [(chapter, sentences(paragraph)) for chapter, paragraph in paragraphs(text)]
    chapters: dict[str, set] = {}
    for chapter, parts in split:
        for part in parts:
            if MIN_WORDS <= _words(part) <= MAX_WORDS:
                chapters.setdefault(part, set()).add(chapter)
    texts = sorted(chapters)
    lengths = np.array([len(t) for t in texts])
    candidates = [(chapter, parts[max(0, i - CONTEXT_SENTENCES):i], parts[i]) for chapter, parts in split
                  for i in range(1, len(parts)) if MIN_WORDS <= _words(parts[i]) <= MAX_WORDS]
    if len(candidates) > items:
        candidates = [candidates[i * len(candidates) // items] for i in range(items)]
    out = []
    for index, (chapter, context, target) in enumerate(candidates):
        rng = random.Random(seed + index)
        choices = rng.sample(_nearest_in_length(texts, lengths, chapters, target, chapter), CHOICES - 1) + [target]
        rng.shuffle(choices)
        out.append({"id": index, "chapter": chapter, "context": " ".join(context), "choices": choices,
                    "gold": choices.index(target)})
    return out
