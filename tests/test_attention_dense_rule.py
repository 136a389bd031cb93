"""The dense rule of Double Sparsity decoding (compress.attention.decoding.dense_rule): crossovers read from the
stored table per GPU name, the fallback for other GPUs and the CPU, dense below a row count's crossover and sparse
from it, crossovers derived from timings, and a measured run stored into the table."""
import json

import pytest

from compress.attention.decoding.dense_rule import TABLE, DenseRule, crossovers, rule_for, store_rule


def test_dense_below_the_crossover_sparse_from_it():
    rule = DenseRule("x", {3: None, 12: 65536, 48: 16384})
    assert not rule.sparse(1, 1 << 20, 3, 64)  # 3 rows: never
    assert not rule.sparse(4, 65535, 3, 64) and rule.sparse(4, 65536, 3, 64)
    assert not rule.sparse(16, 16383, 3, 64) and rule.sparse(16, 16384, 3, 64)
    assert rule.sparse(64, 16384, 3, 64)  # more rows than measured: the most rows' crossover
    assert not rule.sparse(8, 65535, 3, 64) and rule.sparse(8, 65536, 3, 64)
    assert not rule.sparse(1, 1 << 20, 2, 64)  # fewer rows than any measured: never
    # 128-channel heads read twice the bytes a token: half the context reaches the same crossover
    assert rule.sparse(16, 8192, 3, 128) and not rule.sparse(16, 8191, 3, 128)
    assert rule.sparse(1, 65536, 12, 64)  # 12 rows, however made of batch and KV heads


def test_noise_never_makes_fewer_rows_cheaper():
    """A crossover is at least every larger row count's: a row count measured faster than a larger one
    (noise) takes the larger one's crossover; None (never) above wins over any."""
    rule = DenseRule("x", {3: 8192, 12: 32768, 48: 16384})
    assert rule.threshold(3) == rule.threshold(12) == 32768 and rule.threshold(48) == 16384
    assert DenseRule("x", {3: 4096, 48: None}).threshold(3) == float("inf")


def test_crossovers_from_timings():
    def row(rows, context, dense, sparse):
        return {"rows": rows, "context": context, "dense_ms": dense, "sparse_ms": sparse}

    timings = [row(3, 4096, 1.0, 1.2), row(3, 8192, 1.0, 0.9), row(3, 16384, 1.0, 1.01),  # a late loss: never
               row(48, 4096, 1.0, 1.01), row(48, 8192, 1.0, 0.96), row(48, 16384, 2.0, 1.0),
               row(12, 4096, 1.0, 0.5), row(12, 8192, 1.0, 0.5)]
    assert crossovers(timings, 1.05) == {3: None, 12: 4096, 48: 16384}  # 0.96 x 1.05 > 1.0: not by the margin
    assert crossovers(timings, 1.0)[48] == 8192


def test_stored_table_and_fallback():
    stored = json.loads(TABLE.read_text())
    for name, entry in stored["gpus"].items():
        rule = rule_for(name)
        assert rule.name == name and rule.crossover == {int(k): v for k, v in entry["crossover"].items()}
    assert rule_for(None).name == "fallback" and rule_for("Some Other GPU").name == "fallback"
    fallback = rule_for(None)
    assert not fallback.sparse(1, 1 << 17, 3, 64) and not fallback.sparse(16, 16384, 3, 64)
    assert fallback.sparse(16, 32768, 3, 64)


def test_a_measured_run_is_stored_under_its_gpu(tmp_path):
    from compress.errors import BadInput

    table = tmp_path / "rule.json"
    table.write_text(TABLE.read_text())
    result = {"meta": {"commit": "abcdef123456", "date": "2026-12-07"},
              "rule": {"gpu": "NVIDIA H100 80GB HBM3", "crossover": {"3": None, "12": 65536}, "head_dim": 64,
                       "margin": 1.05, "source": "test"}}
    entry = store_rule(result, table)
    assert entry["source"].endswith("abcdef1, 2026-12-07")
    rule = rule_for("NVIDIA H100 80GB HBM3", table)
    assert rule.crossover == {3: None, 12: 65536} and rule.sparse(4, 65536, 3, 64)
    assert rule_for("NVIDIA H200", table).crossover == rule_for("NVIDIA H200").crossover  # others kept
    with pytest.raises(BadInput):
        store_rule({"rule": {**result["rule"], "gpu": "cpu"}}, table)


def test_eager_crossovers_are_read_for_eager_steps(tmp_path):
    """rule_for(eager=True): the GPU's eager crossovers, else the fallback's; the graphed ones otherwise."""
    table = tmp_path / "rule.json"
    stored = json.loads(TABLE.read_text())
    stored["gpus"]["A"] = {"crossover": {"3": 4096}, "eager_crossover": {"3": 65536}, "head_dim": 64}
    stored["gpus"]["B"] = {"crossover": {"3": 4096}, "head_dim": 64}
    table.write_text(json.dumps(stored))
    assert rule_for("A", table).sparse(1, 4096, 3, 64) and not rule_for("A", table, eager=True).sparse(1, 4096, 3, 64)
    assert rule_for("A", table, eager=True).sparse(1, 65536, 3, 64)
    fallback_eager = {int(k): v for k, v in stored["fallback"]["eager_crossover"].items()}
    assert rule_for("B", table, eager=True).crossover == fallback_eager
    assert rule_for(None, table, eager=True).crossover == fallback_eager
    result = {"meta": {}, "rule": {"gpu": "C", "crossover": {"3": None}, "head_dim": 64, "margin": 1.05, "source": "t"},
              "eager_rule": {"crossover": {"48": 32768}}}
    store_rule(result, table)
    assert rule_for("C", table, eager=True).crossover == {48: 32768}
