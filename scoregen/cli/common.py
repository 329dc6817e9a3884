"""What several commands share: reading a --device argument."""
from __future__ import annotations

import torch


def parse_device(name: str) -> torch.device:
    """'auto' (CUDA when present), 'cpu' or 'cuda[:i]', with an error naming a bad or unavailable device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda[:i]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
    return dev
