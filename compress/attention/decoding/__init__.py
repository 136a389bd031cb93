"""Double Sparsity inside the model's own decoding.

  generate.py        each layer's KV and label caches kept behind the attention registry, appended per step;
                     greedy decoding with the kernels (CUDA, or Triton's interpreter) or the PyTorch path
  generate_check.py  checks it against dense decoding and the evaluation mode
"""
