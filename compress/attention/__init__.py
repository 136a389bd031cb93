"""Double Sparsity (arXiv 2408.07092): heavy channels of Q·K found offline predict which past tokens
matter; attention then reads only the top tokens.

  channels.py   the channel file (the reference's/SGLang's JSON, plus a GQA-aware selection)
  calibrate.py  channel statistics over calibration windows (post-RoPE q/k through the attention registry)
  sparse.py     the tensor math: label quantisation, token selection, attention over the selected tokens
  runtime.py    the sparse attention installed through transformers' AttentionInterface
  measure.py    perplexity, greedy agreement and passkey retrieval, dense vs sparse
  decode.py     Triton decode kernels: label scoring, selection, attention over the selected tokens
  select.py     exact top-T by a radix select over float16 scores (GPU)
  bench.py      kernels vs the PyTorch reference, and timed against dense SDPA decode
  jobs.py, config.py  the calibration job; typed settings
"""
