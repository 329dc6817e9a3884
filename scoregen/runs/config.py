"""Run configurations: named YAML presets, user files, and `key=value` overrides.

A configuration is a dict of six sections:

    data:   what to train on   (images: name, split, value_range, flip, limit, data_dir, ...;
                                points: name, n, seed)
    model:  net (a name in nets.NETS), cond, scale_by_std, and the net's own keyword arguments
    sde:    name (ve, vp, subvp, ladder) and that process's parameters
    loss:   name (losses.LOSSES) and its options
    train:  the fields of train.TrainConfig except loss / loss_options (those come from `loss`)
    sample: sampler (samplers.SAMPLERS), n, batch_size, seed, and that sampler's options

Presets live in scoregen/configs/NAME.yaml (`preset_names()`). A user file may start from a preset
with `base: NAME_OR_FILE` and list only what differs. Overrides are `section.key=value` with the
value parsed as YAML (`train.lr=3e-4`, `model.channels=[16,32,64,128]`, `data.limit=null`).

Every key is checked against what the code accepts, read from the code itself (the dataclass
fields of TrainConfig, the signatures of the chosen network, SDE, loss and sampler), so a typo
fails at once with a message naming the key and listing the valid ones.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import re
from pathlib import Path

import yaml

__all__ = ["SECTIONS", "DATA_KEYS", "SAMPLE_KEYS", "SELECTORS", "preset_names", "preset_path", "load_config",
           "apply_overrides", "parse_value", "parse_key_value", "parse_override", "sampler_option_names",
           "check_sampler_options", "parse_sampler_options", "validate_config", "valid_keys", "dump_config"]

SECTIONS = ("data", "model", "sde", "loss", "train", "sample")
#: data keys: images (images.load_images) and points (data.load_points)
DATA_KEYS = ("name", "split", "value_range", "flip", "limit", "data_dir", "root", "size", "grey", "download",
             "n", "seed")
MODEL_KEYS = ("net", "cond", "scale_by_std", "scale_input", "parameterization", "sigma_data")
#: sample keys handled by the caller rather than passed to the sampler
SAMPLE_KEYS = ("sampler", "n", "batch_size", "seed")
_SAMPLER_ARGS = {"score_fn", "sde", "x", "generator", "return_trajectory", "progress"}
_CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"  # scoregen/configs (package data)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-4 (no dot) as a float, as YAML 1.2 and Python do."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?\d[\d_]*\.\d*(?:[eE][-+]?\d+)?$"
               r"|^[-+]?\.\d+(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def _yaml(text: str, source: str):
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        raise ValueError(f"cannot parse {source} as YAML: {e}") from None


def preset_names() -> list[str]:
    return sorted(p.stem for p in _CONFIG_DIR.glob("*.yaml"))


def preset_path(name_or_path) -> Path:
    """A preset's file by name, or the given file path."""
    p = Path(str(name_or_path)).expanduser()
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist")
        return p
    q = _CONFIG_DIR / f"{name_or_path}.yaml"
    if not q.is_file():
        raise ValueError(f"unknown config {name_or_path!r}: not a file, and the presets are {preset_names()}")
    return q


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _read(name_or_path, seen=()) -> dict:
    path = preset_path(name_or_path)
    if path.resolve() in seen:
        raise ValueError(f"config {path} inherits from itself through 'base'")
    cfg = _yaml(path.read_text(), str(path))
    if not isinstance(cfg, dict):
        raise ValueError(f"config {path} must be a mapping of the sections {list(SECTIONS)}, got {type(cfg).__name__}")
    base = cfg.pop("base", None)
    if base is not None:
        # a relative file name in `base` is relative to the file that names it
        ref = path.parent / base if (path.parent / str(base)).is_file() else base
        cfg = _merge(_read(ref, (*seen, path.resolve())), cfg)
    return cfg


def load_config(name_or_path, overrides=(), validate: bool = True) -> dict:
    """Read a preset (by name) or a YAML file, apply `key=value` overrides, check every key."""
    cfg = _read(name_or_path)
    for s in SECTIONS:
        cfg.setdefault(s, {})
        if cfg[s] is None:
            cfg[s] = {}
    cfg = apply_overrides(cfg, overrides)
    if validate:
        validate_config(cfg)
    return cfg


def parse_value(text: str, source: str = "a value"):
    """One KEY=VALUE value, read the YAML way: 3 -> int, 1e-4 and 0.1 -> float, true -> bool,
    null or nothing -> None, [16,32] -> list; anything else stays a string. The one parser of every
    KEY=VALUE argument (config overrides and sampler options alike)."""
    text = str(text)
    return _yaml(text, source) if text.strip() else None


def parse_key_value(text: str, example: str = "key=value") -> tuple[str, object]:
    """'key=value' -> ('key', value parsed by `parse_value`); ValueError naming `text` otherwise."""
    key, sep, raw = str(text).partition("=")
    key = key.strip()
    if not sep or not key:
        raise ValueError(f"{text!r} must look like {example}")
    return key, parse_value(raw, f"the value of {text!r}")


def parse_override(text: str):
    """'a.b=value' -> (['a', 'b'], value parsed as YAML)."""
    key, value = parse_key_value(text, "section.key=value (e.g. train.lr=3e-4)")
    if any(not part for part in key.split(".")):
        raise ValueError(f"override {text!r} must look like section.key=value (e.g. train.lr=3e-4)")
    return key.split("."), value


def sampler_option_names(sampler) -> list[str]:
    """The options a sampler (a name or the function) takes beyond the common signature
    (score_fn, sde, x, generator, return_trajectory, progress), `steps` included."""
    from ..sampling.samplers import get_sampler

    fn = get_sampler(sampler) if isinstance(sampler, str) else sampler
    return _params(fn, drop=_SAMPLER_ARGS)


def check_sampler_options(sampler, options) -> dict:
    """`options` if the sampler takes every one of them, else a one-line ValueError listing what it takes."""
    from ..sampling.samplers import get_sampler

    fn = get_sampler(sampler) if isinstance(sampler, str) else sampler
    takes = sampler_option_names(fn)
    bad = [k for k in options if k not in takes]
    if bad:
        name = sampler if isinstance(sampler, str) else getattr(fn, "__name__", str(fn))
        raise ValueError(f"sampler {name!r} takes no option {', '.join(map(repr, bad))}; its options: "
                         f"{', '.join(takes) or 'none'}")
    return dict(options)


def parse_sampler_options(items, sampler=None) -> dict:
    """KEY=VALUE arguments (each value by `parse_value`) as a dict, checked against `sampler` when given."""
    out = dict(parse_key_value(it, "key=value (e.g. rtol=1e-4)") for it in items or ())
    return check_sampler_options(sampler, out) if sampler is not None else out


#: keys that choose a component; the other keys of their section are that component's options
SELECTORS = {"model": "net", "sde": "name", "loss": "name", "sample": "sampler"}


def apply_overrides(cfg: dict, overrides) -> dict:
    """Apply overrides in order.

    Changing a selector (model.net, sde.name, loss.name, sample.sampler) drops the options of
    its section that the new choice does not accept (e.g. sample.snr when switching from 'pc' to
    'ode'), and makes the new choice's options valid for the overrides after it.
    """
    cfg = copy.deepcopy(cfg)
    for text in overrides or ():
        keys, value = parse_override(text)
        section = keys[0]
        if section not in SECTIONS:
            raise ValueError(f"unknown config section {section!r} in override {text!r}; sections: {list(SECTIONS)}")
        if len(keys) == 1:
            raise ValueError(f"override {text!r} names a whole section; set its keys: {section}.KEY=VALUE")
        valid = valid_keys(cfg, section)
        if keys[1] not in valid and keys[1] not in cfg[section]:
            raise ValueError(f"unknown key {'.'.join(keys[:2])!r} in override {text!r}; valid keys of "
                             f"'{section}': {valid}")
        node = cfg[section]
        for k in keys[1:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        old = node.get(keys[-1])
        node[keys[-1]] = value
        if len(keys) == 2 and SELECTORS.get(section) == keys[1] and value != old:
            keep = set(valid_keys(cfg, section))
            cfg[section] = {k: v for k, v in cfg[section].items() if k in keep}
    return cfg


def _params(fn, drop=()) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p not in drop and p not in ("self", "args", "kwargs")]


def valid_keys(cfg: dict, section: str) -> list[str]:
    """The keys the code accepts in `section`, given the names chosen elsewhere in `cfg`."""
    part = cfg.get(section) or {}
    if section == "data":
        return list(DATA_KEYS)
    if section == "train":
        from ..training.trainer import TrainConfig

        return [f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("loss", "loss_options")]
    if section == "model":
        from ..models.nets import NETS

        net = part.get("net")
        return list(MODEL_KEYS) + (_params(NETS[net]) if net in NETS else [])
    if section == "sde":
        from ..process.sde import SDE_NAMES

        key = _registry_key(SDE_NAMES, part.get("name", ""))
        return ["name"] + (_params(SDE_NAMES[key]) if key is not None else [])
    if section == "loss":
        from ..training.losses import LOSS_OPTIONS as _OPTIONS  # the loss options make_loss accepts (some losses are lambdas)

        return ["name"] + list(_OPTIONS.get(part.get("name"), ()))
    if section == "sample":
        from ..sampling.samplers import get_sampler

        try:
            fn = get_sampler(part.get("sampler", "pc"))
        except ValueError:
            return list(SAMPLE_KEYS)
        return list(SAMPLE_KEYS) + sampler_option_names(fn)
    raise ValueError(f"unknown config section {section!r}; sections: {list(SECTIONS)}")


def _registry_key(registry, name) -> str | None:
    """The canonical name `name` stands for in a `util.Registry` (its one name rule), or None."""
    try:
        return registry.key(name)
    except ValueError:
        return None


def validate_config(cfg: dict) -> None:
    """Raise ValueError naming the first unknown section, name or key (and listing valid ones)."""
    unknown = sorted(set(cfg) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; sections: {list(SECTIONS)}")
    from ..models.nets import NETS
    from ..process.sde import SDE_NAMES
    from ..sampling.samplers import get_sampler
    from ..training.losses import LOSSES

    for section, key, what, names in (("model", "net", "network", NETS), ("sde", "name", "SDE", SDE_NAMES),
                                      ("loss", "name", "loss", LOSSES)):
        value = (cfg.get(section) or {}).get(key)
        norm = _registry_key(names, value) if section == "sde" else value
        if key in (cfg.get(section) or {}) and norm not in names:
            raise ValueError(f"unknown {what} {value!r} in {section}.{key}; choose one of {sorted(names)}")
    if "sampler" in (cfg.get("sample") or {}):
        get_sampler(cfg["sample"]["sampler"])  # raises with the list of samplers
    for section in SECTIONS:
        part = cfg.get(section) or {}
        if not isinstance(part, dict):
            raise ValueError(f"config section {section!r} must be a mapping, got {part!r}")
        valid = valid_keys(cfg, section)
        bad = sorted(set(part) - set(valid))
        if bad:
            raise ValueError(f"unknown key(s) {[f'{section}.{k}' for k in bad]}; valid keys of '{section}': {valid}")


def dump_config(cfg: dict) -> str:
    """The configuration as YAML text (for a run folder's config.yaml)."""
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)
