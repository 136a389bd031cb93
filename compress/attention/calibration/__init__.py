"""The channel file and its calibration.

  channels.py    the channel file (the reference's/SGLang's JSON, plus a GQA-aware selection)
  calibrate.py   channel statistics over calibration windows (post-RoPE q/k through the attention registry)
  prior.py       the position prior: the mean logit per query-key distance, added to label scores
  projection.py  projected labels: rank-r maps of q and k fitted to q·k (beyond the paper)
  jobs.py        the calibration job (load, accumulate, write), for the CLI and scripts
"""
