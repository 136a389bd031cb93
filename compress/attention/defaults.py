"""The default Double Sparsity setting as plain values, read by the typed config and the CLI's flags alike
(importing it costs nothing). Chosen by measurement on the default model at T = 1/16 of the context
(benchmarks/attention_quality.py: 8 held-out windows of 4K and of 2K tokens, paired against dense; BENCHMARKS.md,
"Double Sparsity"): rank-8 projected labels (1/8 of a 64-channel head) in 4 bits with the position prior.
The calibration defaults fit the projected labels on windows as long as the model's usual context."""
from __future__ import annotations

CHANNELS = "1/8"
TOKENS = "1/16"
DENSE_LAYERS = 2
LABEL_BITS = 4
LABELS = "projection"
POSITION_PRIOR = True
PER_KV_HEAD = True

CALIBRATION_PROJECTION = True
CALIBRATION_NSAMPLES = 4
CALIBRATION_SEQLEN = 8192
