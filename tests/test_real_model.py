"""The default assets, pruned for real on the CPU: the methods must rank as the literature says."""
import pytest

from compress.calibrate.data import TextSource, calibration_tokens, evaluation_tokens
from compress.evaluate import perplexity
from compress.model.loading import load_model
from compress.prune.apply import PruneConfig, prune_model

pytestmark = pytest.mark.slow

NSAMPLES, SEQLEN, EVAL_TOKENS, CONTEXT = 32, 512, 16384, 1024


@pytest.fixture(scope="module")
def assets():
    model, tokenizer, _ = load_model(None, "float32", "cpu")
    calib = calibration_tokens(tokenizer, TextSource(), NSAMPLES, SEQLEN, seed=0)
    evaluation = evaluation_tokens(tokenizer, TextSource(), EVAL_TOKENS)
    dense = perplexity(model, evaluation, CONTEXT).perplexity
    return calib, evaluation, dense


def pruned_perplexity(method, pattern, calib, evaluation):
    model, _, _ = load_model(None, "float32", "cpu")
    prune_model(model, PruneConfig(method=method, pattern=pattern), calib)
    return perplexity(model, evaluation, CONTEXT).perplexity


def test_dense_perplexity_is_sane(assets):
    _, _, dense = assets
    assert 10 < dense < 60


def test_2_4_methods_rank_dense_sparsegpt_wanda_magnitude(assets):
    calib, evaluation, dense = assets
    ppl = {m: pruned_perplexity(m, "2:4", calib, evaluation) for m in ("sparsegpt", "wanda", "magnitude")}
    print({"dense": dense, **ppl})
    assert dense < ppl["sparsegpt"] < ppl["wanda"] < ppl["magnitude"]


def test_6_8_wanda_stays_within_1_5x_of_dense(assets):
    calib, evaluation, dense = assets
    ppl = pruned_perplexity("wanda", "6:8", calib, evaluation)
    print({"dense": dense, "wanda 6:8": ppl})
    assert ppl < 1.5 * dense
