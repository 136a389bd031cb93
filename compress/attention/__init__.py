"""Double Sparsity (arXiv 2408.07092): heavy channels of Q·K found offline predict which past tokens
matter; attention then reads only the top tokens.

  config.py         typed settings: calibrating a channel file (ChannelCalibration), the sparse attention
                    that reads one (DoubleSparsity)
  defaults.py       the default setting as plain values (chosen by measurement), read by config and the CLI
  calibration/      the channel file and what writes it: the file itself, channel statistics over
                    calibration windows, the position prior, projected labels, the calibration job
  evaluation/       the PyTorch sparse attention installed through the attention registry, over whole
                    windows: perplexity, greedy agreement, passkey retrieval (the quality numbers)
  decode_kernels/   one decode step on a label cache: its formats in PyTorch (decode_torch.py, what the CPU
                    runs) and the Triton kernels (labels, select, decode, append; imported only where used),
                    and their benchmark
  decoding/         Double Sparsity inside the model's own generation: DoubleSparseCache for stock
                    `model.generate`, the step benchmarks' decoder, and their checks

    from compress.attention import DoubleSparseCache
    model.generate(ids, cache=DoubleSparseCache(model, "channels.json"))  # or past_key_values=, as transformers names it
"""

__all__ = ["DoubleSparseCache", "install", "uninstall"]


def __getattr__(name: str):
    if name in __all__:  # transformers is imported only when asked for
        from compress.attention.decoding import cache

        return getattr(cache, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
