"""Runs: presets and overrides (config), config -> data, model and run folder (recipe), and a trained run
folder loaded once (run: `Run.open(run_dir)`, also importable as `scoregen.runs.Run`)."""


def __getattr__(name):  # `Run` on first use, so that importing runs.config stays light
    if name == "Run":
        from .run import Run

        return Run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
