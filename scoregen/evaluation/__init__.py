"""Evaluation: sample metrics for points (metrics) and images (image_metrics, with the feature classifier of
classifier), and run evaluation shared by cli/ and benchmarks/ (harness: quality vs NFE, batched likelihoods).

`scoregen.evaluation` re-exports the run-evaluation module's names (it was that module before the subpackages).
"""
from .harness import *  # noqa: F401,F403
from .harness import __all__  # noqa: F401
