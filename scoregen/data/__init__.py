"""Data: point clouds (points) and image data sets (images).

`scoregen.data` re-exports the point-cloud module's names (it was that module before the subpackages).
"""
from .points import *  # noqa: F401,F403
from .points import __all__  # noqa: F401
