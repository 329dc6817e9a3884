"""`scoregen export`: a run as safetensors weights + a JSON description, reloadable without pickle."""
from __future__ import annotations

import json
from pathlib import Path

HELP = "export a run (or an export) as model.safetensors + scoregen_export.json, read back by every command"

EXAMPLES = [
    "scoregen export runs/mix --out runs/mix-export",
    "scoregen sample runs/mix-export --n 100 --sampler dpmpp2m --steps 10",
]


def add_arguments(p):
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder made by `scoregen train` (or an export)")
    p.add_argument("--out", required=True, metavar="DIR", help="the export folder (created; its two files replaced)")


def run(args) -> int:
    from ..interop.export import EXPORT_CONFIG_NAME, WEIGHTS_NAME, export_run
    from ..runs.run import Run

    run_dir, out = Path(args.run_dir), Path(args.out)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist")
    if out.resolve() == run_dir.resolve():
        raise ValueError(f"--out {str(out)!r} is the run folder itself; export to another folder")
    run = Run.open(run_dir)
    if run.meta.get("source") == "diffusers":
        raise ValueError(f"{run_dir} is a diffusers folder; `scoregen export` writes scoregen runs "
                         "(the diffusers folder is already read by every command as it is)")
    export_run(run, out)
    n = sum(v.numel() for v in run.model.state_dict().values())
    print(json.dumps({"out": str(out), "weights": str(out / WEIGHTS_NAME), "config": str(out / EXPORT_CONFIG_NAME),
                      "tensors": len(run.model.state_dict()), "parameters": int(n)}))
    return 0
