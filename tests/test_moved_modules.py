"""Old import paths keep working for one release (scoregen.MOVED_MODULES): each is the new module itself."""
import importlib
import subprocess
import sys
import warnings

import pytest

import scoregen


@pytest.mark.parametrize("old, new", sorted(scoregen.MOVED_MODULES.items()))
def test_every_old_path_is_the_new_module(old, new):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        moved = importlib.import_module(f"scoregen.{old}")
    assert moved is importlib.import_module(f"scoregen.{new}")
    assert sys.modules[f"scoregen.{old}"] is moved and getattr(scoregen, old) is moved
    assert moved.__name__ == moved.__spec__.name == f"scoregen.{new}"


def test_old_spellings_of_imports():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import scoregen.nets.unet
        import scoregen.sde
        from scoregen import samplers
        from scoregen.nets import build_net
        from scoregen.preconditioning import EDMLoss
        from scoregen.recipe import train_run
    from scoregen.models.nets import build_net as new_build_net
    from scoregen.models.nets import unet
    from scoregen.process import sde
    from scoregen.runs.recipe import train_run as new_train_run
    from scoregen.sampling import samplers as new_samplers
    from scoregen.training.losses import EDMLoss as new_loss

    assert scoregen.sde is sde and samplers is new_samplers and scoregen.nets.unet is unet
    assert build_net is new_build_net and train_run is new_train_run and EDMLoss is new_loss


def test_packages_that_were_modules_keep_their_names():
    from scoregen import data, evaluation, models
    from scoregen.data import points
    from scoregen.evaluation import harness
    from scoregen.models import score

    for package, module in ((models, score), (data, points), (evaluation, harness)):
        assert package.__all__ == module.__all__
        assert all(getattr(package, name) is getattr(module, name) for name in module.__all__)


def test_an_old_path_warns_once_and_the_new_path_does_not():
    code = ("import warnings; warnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as new:\n    import scoregen.sampling.samplers\n"
            "with warnings.catch_warnings(record=True) as old:\n    import scoregen.samplers\n"
            "print(len(new), [str(w.message) for w in old if w.category is DeprecationWarning])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("0 ['scoregen.samplers moved to scoregen.sampling.samplers; "
                                  "the old path works for one release']")
