"""Double Sparsity inside the model's own decoding.

  cache.py           DoubleSparseCache: a transformers Cache holding the KV and label caches, and the attention
                     function it installs, so stock `model.generate` (greedy, sampling, left-padded batches)
                     decodes sparsely; `compress attention generate` runs through it
  cache_layers.py    its layers: keys and values in buffers written in place, and the label cache beside them
  generate.py        a decoder with buffers of its own (sized up front, so one CUDA graph holds a decode step),
                     for the step benchmarks; the settings both read (decoder_from_settings)
  generate_check.py  checks both against dense decoding and the evaluation mode
  dense_rule.py      when a step stays dense (sparse would be slower): crossovers measured per GPU, stored in
                     dense_rule.json, read by both
"""
