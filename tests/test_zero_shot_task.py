"""The offline zero-shot task (compress.zero_shot.next_sentence) has the documented shape, is deterministic and
is cut from the novel; and without lm-evaluation-harness `--tasks` is refused in one line naming the extra.
None of these need lm-eval."""
import re
import sys

import pytest
from typer.testing import CliRunner

from compress.cli import app
from compress.zero_shot import next_sentence


@pytest.fixture(scope="module")
def novel() -> str:
    from compress.defaults.assets import EVALUATION_NOVEL, austen_novels

    return austen_novels()[EVALUATION_NOVEL]


@pytest.fixture(scope="module")
def items(novel) -> list[dict]:
    return next_sentence.build_items(novel)


def test_sentences_split_after_ends_but_not_after_titles_or_initials():
    paragraph = ('Mr. Elliot came in. "Is it you?" said Mrs. Clay. She knew J. Smith well! Then, '
                 "at last--they left? 'Yes,' said Anne.")
    assert next_sentence.sentences(paragraph) == [
        "Mr. Elliot came in.", '"Is it you?" said Mrs. Clay.', "She knew J. Smith well!",
        "Then, at last--they left?", "'Yes,' said Anne."]


def test_paragraphs_split_back_into_their_sentences(novel):
    paragraphs = next_sentence.paragraphs(novel)
    assert [c for c, _ in paragraphs][0] == 1 and paragraphs[-1][0] == 24  # Persuasion's 24 chapters
    assert all(" ".join(next_sentence.sentences(p)) == p for _, p in paragraphs)


def test_items_have_the_documented_shape(items):
    assert len(items) == next_sentence.ITEMS >= 500
    for index, item in enumerate(items):
        assert set(item) == {"id", "chapter", "context", "choices", "gold"} and item["id"] == index
        assert len(item["choices"]) == next_sentence.CHOICES == 4 and len(set(item["choices"])) == 4
        assert 0 <= item["gold"] < 4 and item["context"]
        target = item["choices"][item["gold"]]
        assert next_sentence.MIN_WORDS <= len(target.split()) <= next_sentence.MAX_WORDS
    golds = [item["gold"] for item in items]
    assert all(0.2 <= golds.count(g) / len(golds) <= 0.3 for g in range(4))  # shuffled: each near a quarter


def test_the_true_sentence_follows_its_context_in_the_novel(novel, items):
    flat = re.sub(r"\s+", " ", novel)
    for item in items:
        assert f"{item['context']} {item['choices'][item['gold']]}" in flat


def test_distractors_come_from_other_chapters_and_match_in_length(novel, items):
    """Recomputed from the definition: each distractor is a sentence of MIN..MAX words found only in other
    chapters, and fewer than NEAREST such sentences are strictly closer to the target's length."""
    chapters: dict[str, set] = {}
    for chapter, paragraph in next_sentence.paragraphs(novel):
        for sentence in next_sentence.sentences(paragraph):
            if next_sentence.MIN_WORDS <= len(sentence.split()) <= next_sentence.MAX_WORDS:
                chapters.setdefault(sentence, set()).add(chapter)
    for item in items[::7]:
        target = item["choices"][item["gold"]]
        eligible = [s for s, found in chapters.items() if item["chapter"] not in found and s != target]
        for distractor in (c for i, c in enumerate(item["choices"]) if i != item["gold"]):
            assert distractor in eligible
            gap = abs(len(distractor) - len(target))
            assert sum(abs(len(s) - len(target)) < gap for s in eligible) < next_sentence.NEAREST


def test_construction_is_deterministic_and_seeded(novel, items):
    assert next_sentence.build_items(novel) == items
    other = next_sentence.build_items(novel, seed=next_sentence.SEED + 1)
    assert [i["context"] for i in other] == [i["context"] for i in items]  # the same passages
    assert [i["choices"] for i in other] != [i["choices"] for i in items]  # other draws


def test_tasks_without_lm_eval_is_one_line_and_exit_2(tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` raises ImportError
    result = CliRunner().invoke(app, ["eval", str(tiny_model_dir), "--tasks", "persuasion_next_sentence",
                                      "--device", "cpu", "--max-tokens", "64", "--context", "32"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "pip install 'compress[zeroshot]'" in lines[0]


def test_tasks_settings_are_checked_before_any_work(tiny_model_dir):
    runner = CliRunner()
    for args, message in [(["--tasks", ""], "task names must be non-empty"),
                          (["--tasks", "a,a"], "named twice"), (["--limit", "3"], "--limit goes with --tasks"),
                          (["--tasks", "persuasion_next_sentence", "--limit", "0"], "--limit")]:
        result = runner.invoke(app, ["eval", str(tiny_model_dir), "--device", "cpu", *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)
