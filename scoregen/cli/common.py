"""What several commands share: the --device argument, progress bars, sampler options, counts, examples."""
from __future__ import annotations

import sys

import torch

from ..util import check_positive_int


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


# --- progress bars --------------------------------------------------------------------------------
def add_progress_flag(p) -> None:
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (they are off anyway when stderr is not a terminal, e.g. a log file)")


def show_progress(args, stream=None) -> bool:
    """Bars only when asked for (no --no-progress) and stderr is a terminal: a log file gets no redraws."""
    stream = sys.stderr if stream is None else stream
    if getattr(args, "no_progress", False):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


# --- sampler options --------------------------------------------------------------------------------
def add_sampler_options(p, example: str = "snr=0.1 rtol=1e-4 churn=40") -> None:
    """The positional KEY=VALUE list of a command that samples (cli.KEY_VALUE_DESTS: 'options')."""
    p.add_argument("options", nargs="*", metavar="KEY=VALUE",
                   help=f"options of the chosen sampler, values read as YAML ({example}); a sampler "
                        "refuses an option it does not take, naming the ones it does")


def chosen_sampler(cfg: dict, name: str | None) -> str:
    """--sampler, else the run's configured sample.sampler, else pc (as recipe.sample_run chooses)."""
    return name or (cfg.get("sample") or {}).get("sampler") or "pc"


def sampler_options(args, sampler) -> dict:
    """The command's KEY=VALUE sampler options, parsed and checked against `sampler` (a name or several)."""
    from ..runs.config import check_sampler_options, parse_sampler_options

    opts = parse_sampler_options(getattr(args, "options", None) or ())
    for name in [sampler] if isinstance(sampler, str) else sampler:
        check_sampler_options(name, opts)
    return opts


# --- post-hoc EMA ----------------------------------------------------------------------------------
def add_ema_flags(p) -> None:
    """--ema-sigma-rel / --ema-step: sample the post-hoc EMA of a run trained with train.posthoc_ema."""
    p.add_argument("--ema-sigma-rel", type=float, default=None, metavar="S",
                   help="use the post-hoc EMA of relative length S (Karras et al. 2024; e.g. 0.05-0.2), "
                        "reconstructed from the run's posthoc_ema/ snapshots (train with train.posthoc_ema=[0.05,0.1])")
    p.add_argument("--ema-step", type=int, default=None, metavar="N",
                   help="with --ema-sigma-rel: the EMA as it was at training step N (default: the last snapshot)")


def ema_args(args) -> dict:
    """{"ema_sigma_rel", "ema_step"} of the command's flags, for `runs.Run.open` / `recipe.sample_run`."""
    return {"ema_sigma_rel": getattr(args, "ema_sigma_rel", None), "ema_step": getattr(args, "ema_step", None)}


# --- counts -----------------------------------------------------------------------------------------
def check_positive(**counts) -> None:
    """ValueError naming the first flag whose value is given but not a positive integer (None = unset)."""
    for name, v in counts.items():
        if v is not None:
            check_positive_int(v, f"--{name.replace('_', '-')}")


# --- examples in --help -------------------------------------------------------------------------------
def epilog(examples) -> str:
    """The 'examples:' block of a command's --help (tests/test_help_examples.py runs every line)."""
    return "examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else ""


# --- the data a run was trained on ------------------------------------------------------------------
def run_data(cfg: dict, given, run_dir) -> str:
    """`given` (a --data argument), else the run's data.name; a point file named by the run that is not
    found from here is a FileNotFoundError that suggests --data (runs trained before paths were
    stored absolute hold the name as typed, relative to where they were trained)."""
    from pathlib import Path

    from ..runs.recipe import is_point_data

    if given is not None:
        return str(given)
    name = (cfg.get("data") or {}).get("name")
    if name is None:
        where = ("the diffusers folder" if (cfg.get("source") or {}).get("kind") == "diffusers"
                 else "its config.yaml (data.name)")
        raise ValueError(f"{run_dir}: {where} names no data set; pass --data NAME_OR_FILE")
    name = str(name)
    if is_point_data(name) and name.lower().endswith((".npy", ".csv")) and not Path(name).expanduser().is_file():
        raise FileNotFoundError(f"the run's data file {name!r} (data.name in {run_dir}/config.yaml) is not found "
                                f"from {Path.cwd()}; pass --data FILE with its path")
    return name
