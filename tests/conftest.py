"""Shared test set-up.

Tests run with one torch thread: the tensors here are small, where a thread pool costs more than
it gains (and thrashes on a shared 2-core machine); pytest-xdist, when present, runs test files in
parallel instead.
"""
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

#: The real data sets, beside the project (see ../shared/data/README.md).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def require_shared_data(sub: str = "") -> Path:
    """The path of ../shared/data/<sub>; skip with a reason where it is absent, fail under CI=true."""
    path = SHARED_DATA / sub
    if not path.exists():
        msg = f"real data not found at {path} (see the project README: tests read ../shared/data)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + "; under CI=true it must be present")
        pytest.skip(msg)
    return path
