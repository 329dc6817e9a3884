"""scoregen: score-based generative modeling — forward SDEs, score matching, samplers, likelihood, guidance.

The package is folders by role (CONTRIBUTING.md has the map): process/, models/, sampling/, likelihood,
training/, steering/, data/, evaluation/, runs/, plots, cli/.

Modules that moved into those folders keep their old import path for one release: `MOVED_MODULES` maps
each old name (relative to the package) to its new one, and a finder on `sys.meta_path` answers an
import of the old path with the new module itself (the same object: `scoregen.samplers is
scoregen.sampling.samplers`, so monkeypatching and isinstance agree), with a DeprecationWarning. An
old package path carries its submodules (`scoregen.nets.unet` is `scoregen.models.nets.unet`). No
file is left at an old path. `scoregen.models`, `scoregen.data` and `scoregen.evaluation` became
packages that re-export the old modules' names.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

#: old module path -> new module path, relative to the package (kept for one release).
MOVED_MODULES = {
    "sde": "process.sde",
    "distributions": "process.distributions",
    "schedules": "process.schedules",
    "ode": "process.ode",
    "nets": "models.nets",
    "preconditioning": "models.edm",
    "samplers": "sampling.samplers",
    "losses": "training.losses",
    "train": "training.trainer",
    "checkpoint": "training.checkpoint",
    "guidance": "steering.guidance",
    "inverse": "steering.inverse",
    "operators": "steering.operators",
    "noisy_classifier": "steering.noisy_classifier",
    "images": "data.images",
    "metrics": "evaluation.metrics",
    "image_metrics": "evaluation.image_metrics",
    "classifier": "evaluation.classifier",
    "config": "runs.config",
    "recipe": "runs.recipe",
}


def moved_to(fullname: str) -> str | None:
    """The new absolute name of an old `scoregen.` module path, or None if it did not move."""
    head, dot, rest = fullname.partition(".")
    if head != __name__ or not dot:
        return None
    first, _, sub = rest.partition(".")
    new = MOVED_MODULES.get(first)
    return None if new is None else f"{__name__}.{new}" + (f".{sub}" if sub else "")


class _MovedLoader(importlib.abc.Loader):
    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def create_module(self, spec):
        warnings.warn(f"{self.old} moved to {self.new}; the old path works for one release",
                      DeprecationWarning, stacklevel=2)
        module = importlib.import_module(self.new)
        self._spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self._spec  # module_from_spec set the alias's spec; the module keeps its own


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new = moved_to(fullname) if fullname.startswith(__name__ + ".") else None
        return None if new is None else importlib.util.spec_from_loader(fullname, _MovedLoader(fullname, new))


if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
    # first, so that an old package path's submodules are never found (and loaded twice) by the path finder
    sys.meta_path.insert(0, _MovedFinder())
