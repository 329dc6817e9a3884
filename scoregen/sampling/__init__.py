"""Samplers over (score_fn, sde, x): one signature, one registry (samplers)."""
