"""Double Sparsity (arXiv 2408.07092): heavy channels of Q·K found offline predict which past tokens
matter; attention then reads only the top tokens.

  channels.py   the channel file (the reference's/SGLang's JSON, plus a GQA-aware selection)
  calibrate.py  channel statistics over calibration windows (post-RoPE q/k through the attention registry)
  prior.py      the position prior: the mean logit per query-key distance, added to label scores
  projection.py projected labels: rank-r maps of q and k fitted to q·k (beyond the paper)
  sparse.py     the tensor math: label quantisation, token selection, attention over the selected tokens
  runtime.py    the sparse attention installed through transformers' AttentionInterface
  measure.py    perplexity, greedy agreement and passkey retrieval, dense vs sparse
  labels.py     the decode label cache (16-bit, or packed 4-bit) and the Triton kernel that scores with it
  select.py     top-T tokens: torch.topk, or an exact threshold select over float16 scores (Triton)
  decode.py     Triton decode: scoring + selection + attention over the selected tokens
  bench.py      kernels vs the PyTorch reference, and timed against dense SDPA decode
  generate.py   decoding with the kernels inside the model (each layer's KV and label caches, appended per
                step); generate_check.py checks it against dense decoding and the evaluation mode
  append.py     new keys' labels written into the label cache in place (one Triton launch)
  jobs.py, config.py  the calibration job; typed settings
"""
