"""Models: networks that know no SDE (nets/), the ScoreModel, net + SDE -> score(x, t, y=None) (score),
and EDM's preconditioned denoiser (edm).

`scoregen.models` re-exports the ScoreModel module's names (it was that module before the subpackages).
"""
from .score import *  # noqa: F401,F403
from .score import __all__  # noqa: F401
from . import consistency as _consistency  # noqa: F401,E402  (registers parameterization "consistency")
