"""One decode step on a label cache. Only decode_torch.py is plain PyTorch (the CPU install has no Triton);
the other modules import Triton at the top, so import them only where kernels run.

  decode_torch.py  the label cache's two formats (built, read back, sized) and top-T selection in PyTorch
  labels.py        the Triton kernel that scores every cached token with the label cache
  select.py        top-T tokens: torch.topk, or an exact threshold select over float16 scores (Triton)
  decode.py        Triton decode: scoring + selection + attention over the selected tokens
  append.py        new keys' labels written into the label cache in place (one Triton launch)
  bench.py         kernels vs the PyTorch reference, and timed against dense SDPA decode
"""
