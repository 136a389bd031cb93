"""compress.evaluate.perplexity against the model's own `labels=` loss over the same windows."""
import math

import pytest
import torch

from compress.evaluate import perplexity


@pytest.fixture(scope="module")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def reference_perplexity(model, ids, context):
    """exp of the mean of the per-window `labels=` losses (each window scores context - 1 tokens)."""
    losses = []
    with torch.no_grad():
        for start in range(0, ids.numel() - context + 1, context):
            window = ids[start:start + context].unsqueeze(0)
            losses.append(float(model(input_ids=window, labels=window).loss))
    return math.exp(sum(losses) / len(losses)), len(losses)


@pytest.mark.parametrize("context,batch_size", [(64, 1), (48, 3)])
def test_perplexity_equals_exp_of_the_model_loss(tiny_model, context, batch_size):
    ids = torch.randint(0, 320, (5 * 64 + 17,), generator=torch.Generator().manual_seed(0))
    expected, windows = reference_perplexity(tiny_model, ids, context)
    got = perplexity(tiny_model, ids, context=context, batch_size=batch_size)
    assert got.perplexity == pytest.approx(expected, rel=1e-5)
    assert got.windows == windows and got.tokens == windows * (context - 1)
    assert math.exp(got.nll) == pytest.approx(got.perplexity, rel=1e-12)


def test_perplexity_of_a_known_distribution():
    """A model whose logits are fixed: every next token has probability 1/4, so the perplexity is 4."""

    class Uniform4(torch.nn.Module):
        config = type("Config", (), {"max_position_embeddings": 1024})()

        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, use_cache=False):
            logits = torch.full((*input_ids.shape, 320), -1e9)
            logits[..., :4] = 0.0
            return type("Out", (), {"logits": logits})()

    ids = torch.randint(0, 4, (200,), generator=torch.Generator().manual_seed(1))
    result = perplexity(Uniform4(), ids, context=32)
    assert result.perplexity == pytest.approx(4.0, rel=1e-6) and result.tokens == 6 * 31
