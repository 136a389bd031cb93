"""Windows start with the tokenizer's BOS where it adds one; tokenizers that add none are unaffected."""
import math

import pytest
import torch

from compress.calibrate.data import TextSource, calibration_tokens, evaluation_tokens, window_bos
from compress.evaluate import perplexity
from tests.conftest import make_tokenizer, tiny_llama_config


def bos_tokenizer():
    """The test tokenizer, told to start every sequence with <s> (as Llama's does)."""
    from tokenizers.processors import TemplateProcessing

    tok = make_tokenizer()
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.bos_token_id)])
    return tok


@pytest.fixture(scope="module")
def tiny_model():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_llama_config()).eval()


def old_calibration(tokenizer, text, nsamples, seqlen, seed):
    """The windows as cut before BOS windows existed."""
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    starts = torch.randint(0, ids.numel() - seqlen, (nsamples,), generator=torch.Generator().manual_seed(seed))
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])


@torch.no_grad()
def reference_perplexity(model, ids, context, bos_id):
    """Windows built by hand, the NLL from plain log-softmax in float64."""
    total, count = 0.0, 0
    for w in range(ids.numel() // context):
        text = ids[w * context : (w + 1) * context].tolist()
        window = torch.tensor([([] if bos_id is None else [bos_id]) + text])
        logp = torch.log_softmax(model(input_ids=window).logits[0].double(), dim=-1)
        for i in range(window.shape[1] - 1):
            total -= logp[i, window[0, i + 1]].item()
            count += 1
    return math.exp(total / count), count


def test_bos_is_detected_only_where_the_tokenizer_adds_it():
    tok = bos_tokenizer()
    assert window_bos(tok) == tok.bos_token_id
    assert window_bos(tok, bos=False) is None
    plain = make_tokenizer()
    assert plain.bos_token == "<s>" and window_bos(plain) is None  # has a BOS token, does not add it


def test_tokenizer_without_bos_keeps_the_old_windows(text_file, tiny_model):
    tok, source = make_tokenizer(), TextSource(path=str(text_file))
    old = old_calibration(tok, text_file.read_text(), 8, 64, 3)
    assert torch.equal(calibration_tokens(tok, source, 8, 64, 3), old)
    assert torch.equal(calibration_tokens(tok, source, 8, 64, 3, bos=False), old)

    ids = evaluation_tokens(tok, source, 600)
    result = perplexity(tiny_model, ids, 128, bos_id=window_bos(tok))
    assert result.perplexity == perplexity(tiny_model, ids, 128).perplexity
    expected, scored = reference_perplexity(tiny_model, ids, 128, None)
    assert not result.bos and result.tokens == scored == 4 * 127
    assert result.perplexity == pytest.approx(expected, rel=1e-5)


def test_calibration_windows_start_with_bos_and_keep_their_length(text_file):
    tok, source = bos_tokenizer(), TextSource(path=str(text_file))
    calib = calibration_tokens(tok, source, 8, 64, 3)
    assert calib.shape == (8, 64) and (calib[:, 0] == tok.bos_token_id).all()
    text = tok(text_file.read_text(), add_special_tokens=False)["input_ids"]
    assert tok.bos_token_id not in text
    for row in calib[:, 1:].tolist():  # each rest is 63 consecutive text tokens
        assert any(text[s : s + 63] == row for s in range(len(text) - 62))
    assert torch.equal(calibration_tokens(tok, source, 8, 64, 3, bos=False),
                       old_calibration(tok, text_file.read_text(), 8, 64, 3))


def test_evaluation_with_bos_matches_an_independent_evaluator(text_file, tiny_model):
    tok = bos_tokenizer()
    ids = evaluation_tokens(tok, TextSource(path=str(text_file)), 600)
    assert ids.numel() == 600 and tok.bos_token_id not in ids.tolist()
    result = perplexity(tiny_model, ids, 128, bos_id=window_bos(tok))
    expected, scored = reference_perplexity(tiny_model, ids, 128, tok.bos_token_id)
    assert result.bos and result.windows == 4 and result.context == 128
    assert result.tokens == scored == 4 * 128  # every text token scored, the first from BOS
    assert result.perplexity == pytest.approx(expected, rel=1e-5)
    batched = perplexity(tiny_model, ids, 128, batch_size=3, bos_id=tok.bos_token_id)
    assert batched.perplexity == pytest.approx(result.perplexity, rel=1e-5)


def test_bos_window_fits_the_model_positions(text_file, tiny_model):
    tok = bos_tokenizer()
    ids = evaluation_tokens(tok, TextSource(path=str(text_file)), 600)
    seen = []
    forward = lambda batch: seen.append(batch.shape[1]) or tiny_model(input_ids=batch).logits  # noqa: E731
    result = perplexity(tiny_model, ids, 1024, forward=forward, bos_id=tok.bos_token_id)
    assert tiny_model.config.max_position_embeddings == 256
    assert result.context == 255 and result.windows == 600 // 255 and set(seen) == {256}
    assert perplexity(tiny_model, ids, 1024).context == 256  # without BOS the cap is unchanged
