"""Run configurations: presets load and build, overrides parse and are checked, files inherit."""
import pytest
import torch

from scoregen.models.nets import NETS, register_net
from scoregen.models.nets.ncsn import NCSN
from scoregen.models.nets.unet import SeedUNet, UNet
from scoregen.runs.config import apply_overrides, dump_config, load_config, parse_override, preset_names
from scoregen.runs.recipe import build_model, build_sde, is_point_data
from scoregen.sampling.samplers import get_sampler
from scoregen.training.losses import make_loss
from scoregen.training.trainer import TrainConfig

# the image nets' registry entries (a no-op once nets/__init__.py lists them)
for _name, _cls in (("seed-unet", SeedUNet), ("unet", UNet), ("ncsn", NCSN)):
    if _name not in NETS:
        register_net(_name, _cls)

PRESETS = ["cifar10", "fashion-mnist", "mnist", "mnist-cond-tiny", "mnist-edm", "mnist-ncsn", "mnist-tiny", "points"]


def test_every_preset_is_listed():
    assert set(PRESETS) <= set(preset_names())


@pytest.mark.parametrize("name", PRESETS)
def test_preset_builds_every_component(name):
    cfg = load_config(name)
    # `auto` noise scales are measured on the data: give point presets a small standardized sample
    points = torch.randn(64, 2, generator=torch.Generator().manual_seed(0)) if is_point_data(cfg["data"]["name"]) else None
    sde = build_sde(cfg["sde"], points)
    if name != "cifar10":  # 36 M parameters: its options are checked by load_config already
        shape = (2, 2) if is_point_data(cfg["data"]["name"]) else (2, cfg["model"]["in_channels"], 28, 28)
        model = build_model(cfg["model"], sde, shape)
        assert sum(p.numel() for p in model.parameters()) > 0
        assert getattr(model, "parameterization", "score") == cfg["model"].get("parameterization", "score")
    loss = dict(cfg["loss"])
    make_loss(loss.pop("name"), sde, **loss)
    TrainConfig.from_dict({**cfg["train"], "loss": cfg["loss"]["name"]})
    get_sampler(cfg["sample"]["sampler"])


def test_mnist_preset_is_the_seed_recipe():
    cfg = load_config("mnist")
    # seed 001: 15 epochs of 1875 steps of 32 images (60,000 MNIST images), Adam 1e-4, [0, 1] data
    assert cfg["train"]["steps"] * cfg["train"]["batch_size"] == 15 * 60000
    assert cfg["train"]["lr"] == 1e-4 and cfg["train"]["normalize"] is False
    assert cfg["model"]["net"] == "seed-unet" and cfg["sde"]["name"] == "ve"
    assert cfg["sample"]["sampler"] == "pc" and cfg["sample"]["steps"] == 500


def test_overrides_parse_yaml_values():
    assert parse_override("train.lr=3e-4") == (["train", "lr"], 3e-4)  # YAML 1.1 would read a string
    assert parse_override("model.channels=[8, 16]") == (["model", "channels"], [8, 16])
    assert parse_override("data.limit=null")[1] is None
    cfg = load_config("mnist-tiny", ["train.lr=1e-3", "data.limit=100", "train.amp=true"])
    assert cfg["train"]["lr"] == 1e-3 and isinstance(cfg["train"]["lr"], float)
    assert cfg["data"]["limit"] == 100 and cfg["train"]["amp"] is True
    # mnist-tiny inherits everything else from mnist
    assert cfg["sde"] == load_config("mnist")["sde"]


def test_unknown_keys_name_the_key_and_list_valid_ones():
    with pytest.raises(ValueError, match=r"unknown key 'train.lrr'.*'lr'"):
        load_config("mnist", ["train.lrr=1"])
    with pytest.raises(ValueError, match=r"unknown config section 'optim'.*'train'"):
        load_config("mnist", ["optim.lr=1"])
    with pytest.raises(ValueError, match=r"'model.base_channels'.*'channels'"):
        load_config("mnist", ["model.base_channels=8"])
    with pytest.raises(ValueError, match=r"unknown SDE 'vee'"):
        load_config("mnist", ["sde.name=vee"])
    with pytest.raises(ValueError, match="section.key=value"):
        parse_override("train.lr")
    with pytest.raises(ValueError, match="unknown config 'mnits'"):
        load_config("mnits")


def test_sde_names_are_checked_by_the_sde_registrys_rule():
    from scoregen.process.sde import make_sde

    for spelling in ("sub-vp", "Sub_VP", "sub vp", "SUBVP"):  # every spelling make_sde accepts
        cfg = load_config("points", [f"sde.name={spelling}", "sde.beta_max=15"])
        assert type(build_sde(cfg["sde"])) is type(make_sde("subvp"))


def test_changing_a_selector_drops_the_old_options():
    cfg = load_config("mnist", ["sample.sampler=ode", "sample.rtol=1e-3"])
    assert "snr" not in cfg["sample"] and cfg["sample"]["rtol"] == 1e-3
    cfg = apply_overrides(load_config("mnist"), ["model.net=unet", "model.base_channels=16"])
    assert "channels" not in cfg["model"] and cfg["model"]["base_channels"] == 16


def test_files_inherit_and_bad_files_are_named(tmp_path):
    (tmp_path / "a.yaml").write_text("base: mnist-tiny\ntrain:\n  steps: 7\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nsample:\n  n: 4\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert cfg["train"]["steps"] == 7 and cfg["sample"]["n"] == 4 and cfg["model"]["net"] == "seed-unet"
    assert load_config(tmp_path / "b.yaml", ["train.steps=9"])["train"]["steps"] == 9
    (tmp_path / "typo.yaml").write_text("base: mnist\ntrain:\n  stepz: 7\n")
    with pytest.raises(ValueError, match=r"train.stepz"):
        load_config(tmp_path / "typo.yaml")
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ValueError, match="inherits from itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ValueError, match="cannot parse"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_dump_round_trips(tmp_path):
    cfg = load_config("mnist-ncsn")
    (tmp_path / "run.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "run.yaml") == cfg
