"""Training: the objectives (losses), the trainer (trainer) and atomic, code-free checkpoints (checkpoint)."""
