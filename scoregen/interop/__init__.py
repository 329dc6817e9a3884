"""Interoperation with the ecosystem (issue 15): diffusers folders and k-diffusion denoisers in, k-diffusion
denoisers and safetensors exports out.

  adapters   epsilon / sample / v predictions and D(x, sigma) -> score; a scoregen score -> D(x, sigma)
  hf         a diffusers folder (pipeline or unet/ + scheduler/) -> model with .sde and .score_fn()
  export     a run -> model.safetensors + scoregen_export.json, and back without pickle
  folders    which kind of folder a RUN_DIR is, and its parts as `runs.Run` needs them

`diffusers` and `safetensors` are optional (`pip install "scoregen[interop]"`), imported only when used.
"""
