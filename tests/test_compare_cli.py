"""`scoregen compare RUN_DIR` on a tiny trained point run: the table, its summary and the plot."""
import json

import pytest

from scoregen.cli import main
from scoregen.cli.compare import summarize
from scoregen.runs import config, recipe


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = config.load_config("points", ["train.steps=10", "train.checkpoint_every=0", "model.hidden=16",
                                        "model.depth=1", "model.emb_dim=8"])
    recipe.train_run(cfg, run, progress=False)
    return run


def test_compare_writes_table_summary_and_plot(tiny_run, tmp_path):
    out = tmp_path / "cmp"
    code = main(["compare", str(tiny_run), "--samplers", "ddim", "heun", "dpm++2s", "--nfe", "1", "4", "--n", "64",
                 "--out", str(out)])
    assert code == 0
    res = json.loads((out / "compare.json").read_text())
    assert res["metric"] == "energy_distance" and res["kind"] == "points" and res["n"] == 64
    table = res["table"]
    # NFE as each sampler reports it: DDIM K, EDM Heun 2K - 1, DPM-Solver++(2S) 2K (no step fits in 1)
    assert [r["nfe"] for r in table["ddim"]] == [1, 4]
    assert [r["nfe"] for r in table["heun"]] == [1, 3]
    assert [r["nfe"] for r in table["dpm++2s"]] == [4]
    assert all(r["value"] > 0 for rows in table.values() for r in rows)
    assert res["floor"]["repeats"] == 20 and res["floor"]["mean"] > 0
    assert set(res["summary"]["samplers"]) == {"ddim", "heun", "dpm++2s"}
    assert (out / "compare.png").stat().st_size > 0


def test_summary_finds_the_best_and_the_thresholds():
    table = {"a": [{"budget": 10, "nfe": 10, "value": 3.0}, {"budget": 100, "nfe": 100, "value": 1.0}],
             "b": [{"budget": 10, "nfe": 9, "value": 1.05}, {"budget": 100, "nfe": 99, "value": None}]}
    s = summarize(table, {"mean": 0.5, "std": 0.3})
    assert s["best_at_largest_budget"] == {"sampler": "a", "nfe": 100, "value": 1.0, "budget": 100}
    assert s["samplers"]["a"] == {"nfe_within_10pct_of_best": 100, "nfe_at_floor": 100}
    assert s["samplers"]["b"] == {"nfe_within_10pct_of_best": 9, "nfe_at_floor": 9}
    assert s["floor_threshold"] == pytest.approx(1.1)


def test_missing_run_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["compare", str(tmp_path)]) == 2
    assert "not a scoregen run folder" in capsys.readouterr().err
