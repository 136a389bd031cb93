"""The evaluation path: Double Sparsity in PyTorch over whole windows (prefill and decode alike).

  sparse.py    the tensor math: label quantisation, token selection, attention over the selected tokens
  runtime.py   the sparse attention installed through transformers' AttentionInterface
  measure.py   perplexity, greedy agreement and passkey retrieval, dense vs sparse
"""
