"""Two CPU processes under torchrun (gloo) follow the same trajectory as one process on the whole batch."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scoregen.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIG = dict(steps=5, batch_size=64, lr=1e-2, warmup=2, ema_decay=0.9, seed=3, progress=False,
              log_every=1, checkpoint_every=0, loss="sde")

# Runs train() as given, recording the sums of every batch shard it draws, so the test can check
# that the ranks split the global batch rather than each computing all of it. The test process
# runs the same function itself as the single-process reference.
SCRIPT = """
import json, os, sys
import torch
torch.set_num_threads(1)
import scoregen.training.trainer as st
from scoregen.models import ScoreModel
from scoregen.models.nets import build_net
from scoregen.process.distributions import seed_dataset
from scoregen.process.sde import VPSDE


def run(run_dir, config):
    sums, draw, nosync = [], st.Trainer._batch, []
    ddp_cls = torch.nn.parallel.DistributedDataParallel
    plain_no_sync = ddp_cls.no_sync

    def counting(self):
        nosync.append(1)
        return plain_no_sync(self)

    def recording(self):
        x0, draws, y = draw(self)
        sums.append([x0.shape[0], float(x0.double().sum()), float(draws["z"].double().sum())])
        return x0, draws, y

    st.Trainer._batch = recording
    ddp_cls.no_sync = counting
    try:
        torch.manual_seed(0)
        model = ScoreModel(build_net("mlp", dim=2, hidden=16, depth=1, emb_dim=8), VPSDE())
        st.train(model, seed_dataset(120), st.TrainConfig(**config), run_dir)
    finally:
        st.Trainer._batch = draw
        ddp_cls.no_sync = plain_no_sync
    with open(os.path.join(run_dir, "shard%s.json" % os.environ.get("RANK", "single")), "w") as f:
        json.dump(sums, f)
    with open(os.path.join(run_dir, "no_sync%s.json" % os.environ.get("RANK", "single")), "w") as f:
        json.dump(len(nosync), f)


if __name__ == "__main__":
    run(sys.argv[1], json.loads(sys.argv[2]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(script, run_dir, nproc, config=CONFIG):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script), str(run_dir), json.dumps(config)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _ddp_matches_single(tmp_path, ddp_config):
    """Train with two gloo ranks on ddp_config and in this process on CONFIG; assert the same
    weights, EMA and losses; return both checkpoints."""
    script = tmp_path / "run_train.py"
    script.write_text(SCRIPT)
    _torchrun(script, tmp_path / "ddp", 2, ddp_config)
    namespace = {}
    exec(compile(SCRIPT, str(script), "exec"), namespace)
    threads = torch.get_num_threads()
    try:
        namespace["run"](str(tmp_path / "single"), CONFIG)
    finally:
        torch.set_num_threads(threads)
    ddp, single = load_checkpoint(tmp_path / "ddp"), load_checkpoint(tmp_path / "single")
    assert ddp["world_size"] == 2 and ddp["step"] == single["step"] == CONFIG["steps"]
    for key in ("model", "ema"):
        for name, p in single[key].items():
            torch.testing.assert_close(ddp[key][name], p, rtol=1e-5, atol=1e-6, msg=f"{key}.{name}")
    torch.testing.assert_close(ddp["loss_history"], single["loss_history"], rtol=1e-5, atol=1e-6)
    return ddp, single


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_gloo_ranks_match_one_process_on_the_global_batch(tmp_path):
    _ddp_matches_single(tmp_path, CONFIG)
    # each rank drew its own half of the very batch the single process drew
    r0, r1, one = (json.loads((tmp_path / d / f"shard{r}.json").read_text())
                   for d, r in (("ddp", 0), ("ddp", 1), ("single", "single")))
    for a, b, c in zip(r0, r1, one):
        assert a[0] == b[0] == CONFIG["batch_size"] // 2 and c[0] == CONFIG["batch_size"]
        assert a[1] + b[1] == pytest.approx(c[1], rel=1e-9, abs=1e-9) and a[1] != b[1]
        assert a[2] + b[2] == pytest.approx(c[2], rel=1e-9, abs=1e-9)
    # rank 0 alone wrote the log
    assert len((tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()) == CONFIG["steps"]


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_gloo_ranks_with_grad_accum_match_one_process_without(tmp_path):
    """grad_accum=2 on two ranks: each rank's half split again in two, the first under no_sync();
    the same weights as one process taking the whole batch at once."""
    _ddp_matches_single(tmp_path, {**CONFIG, "grad_accum": 2})
    for r in (0, 1):  # one no_sync() per step and rank: gradients all-reduced once per step
        assert json.loads((tmp_path / "ddp" / f"no_sync{r}.json").read_text()) == CONFIG["steps"]
