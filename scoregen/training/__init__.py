"""Training: the objectives (losses), the trainer (trainer) and atomic, code-free checkpoints (checkpoint)."""

from . import consistency as _consistency  # noqa: F401,E402  (registers the loss "consistency")
