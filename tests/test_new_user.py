"""What a new user meets (issue 17): KEY=VALUE values read the YAML way and checked against the
sampler, every sampling command taking sampler options, run folders usable from any directory,
counts honoured, quiet logs, summaries in words, labelled pictures, and the library as the README
shows it."""
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from scoregen import config, plots
from scoregen.cli import main

TINY = ["model.hidden=16", "model.depth=1", "model.emb_dim=8"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("newuser") / "run"
    assert main(["train", "--data", "seed", "--out", str(out), "--steps", "60", "--no-progress", *TINY]) == 0
    return out


@pytest.fixture
def figures(monkeypatch):
    """{file name: the matplotlib figure saved under it} for the pictures written during a test."""
    seen = {}
    save = plots._save

    def spy(fig, path, **kw):
        seen[Path(path).name] = fig
        return save(fig, path, **kw)

    monkeypatch.setattr(plots, "_save", spy)
    return seen


# --- 1. values the YAML way, options checked against the sampler ----------------------------------
@pytest.mark.parametrize("text,value", [("1e-4", 1e-4), ("1.0e-4", 1e-4), ("-2E3", -2000.0), ("40", 40),
                                        ("0.1", 0.1), ("true", True), ("null", None), ("", None),
                                        ("[16,32]", [16, 32]), ("uniform_t", "uniform_t"), (".5", 0.5)])
def test_parse_value_reads_numbers_the_yaml_way(text, value):
    got = config.parse_value(text)
    assert got == value and type(got) is type(value)
    # the same reader behind config overrides and sampler options
    assert config.parse_override(f"train.lr={text}")[1] == value
    assert config.parse_sampler_options([f"rtol={text}"]) == {"rtol": value}


def test_one_parser_serves_every_key_value_reader(run_dir, tmp_path, monkeypatch):
    calls = []
    real = config.parse_value

    def spy(text, source="a value"):
        calls.append(text)
        return real(text, source)

    monkeypatch.setattr(config, "parse_value", spy)
    config.load_config("points", ["train.lr=1e-4"])
    assert main(["sample", str(run_dir), "--n", "8", "--sampler", "ode", "--out", str(tmp_path / "s.npy"),
                 "rtol=1e-4"]) == 0
    assert calls.count("1e-4") == 2


def test_ode_rtol_without_a_dot_is_a_float(run_dir, tmp_path, capsys):
    out = tmp_path / "s.npy"
    assert main(["sample", str(run_dir), "--sampler", "ode", "rtol=1e-4", "--n", "16", "--out", str(out)]) == 0
    assert np.load(out).shape == (16, 2)


@pytest.mark.parametrize("argv,sampler", [(["snr=0.1"], "dpmpp2m"),  # the run's configured sampler
                                          (["--sampler", "ode", "churn=40"], "ode"),
                                          (["--sampler", "ode_euler", "snr=0.1"], "ode_euler")])
def test_an_option_the_sampler_does_not_take_is_one_line_listing_its_options(run_dir, capsys, argv, sampler):
    assert main(["sample", str(run_dir), "--n", "4", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"sampler {sampler!r} takes no option" in err
    assert ", ".join(config.sampler_option_names(sampler)) in err and "steps" in err


def test_ode_variants_list_probability_flow_options_less_the_method():
    assert config.sampler_option_names("ode_euler") == [k for k in config.sampler_option_names("ode") if k != "method"]
    cfg = config.load_config("points", ["sample.sampler=ode_heun", "sample.steps=30"])
    assert cfg["sample"]["steps"] == 30


# --- 2. every command that samples takes the sampler's options ------------------------------------
def test_compare_takes_sampler_options_after_a_list_option(run_dir, tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", str(run_dir), "--samplers", "heun", "--nfe", "3", "5", "--n", "32", "--out", str(out),
                 "churn=40"]) == 0
    res = json.loads((out / "compare.json").read_text())
    assert res["options"] == {"churn": 40}
    assert main(["compare", str(run_dir), "--samplers", "heun", "ddim", "--n", "32", "churn=40"]) == 2
    assert "sampler 'ddim' takes no option 'churn'" in capsys.readouterr().err


def test_evaluate_takes_sampler_options(run_dir, capsys):
    # the options are parsed (not 'unrecognized'); the point run is then refused by evaluate itself
    assert main(["evaluate", str(run_dir), "--sampler", "heun", "churn=40"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized" not in err and "point run" in err


# --- 3. a run trained on a file works from any directory --------------------------------------------
def test_a_data_file_run_works_from_another_directory(tmp_path, monkeypatch, capsys):
    here, there = tmp_path / "here", tmp_path / "there"
    here.mkdir(), there.mkdir()
    np.savetxt(here / "moons.csv", np.random.default_rng(0).normal(size=(200, 2)), delimiter=",")
    monkeypatch.chdir(here)
    assert main(["train", "--data", "moons.csv", "--out", "run", "--steps", "20", "--no-progress", *TINY]) == 0
    saved = config.parse_value((here / "run" / "config.yaml").read_text())
    assert saved["data"]["name"] == str((here / "moons.csv").resolve())
    # rerunning the same command resumes it (the relative name matches the stored absolute one)
    assert main(["train", "--data", "moons.csv", "--out", "run", "--steps", "25", "--no-progress", *TINY]) == 0
    monkeypatch.chdir(there)
    run = str(here / "run")
    assert main(["compare", run, "--samplers", "ddim", "--nfe", "4", "--n", "16", "--out", "c"]) == 0
    assert main(["likelihood", run, "--n", "4", "--rtol", "1e-3", "--atol", "1e-3", "--out", "l.json"]) == 0
    assert json.loads(Path("l.json").read_text())["n"] == 4


def test_a_run_naming_a_relative_file_suggests_data(run_dir, tmp_path, monkeypatch, capsys):
    old = tmp_path / "old"
    old.mkdir()
    cfg = config.parse_value((run_dir / "config.yaml").read_text())
    cfg["data"]["name"] = "moons.csv"  # as runs trained before paths were stored absolute hold it
    (old / "config.yaml").write_text(config.dump_config(cfg))
    (old / "checkpoint.pt").write_bytes((run_dir / "checkpoint.pt").read_bytes())
    monkeypatch.chdir(tmp_path)
    for argv in (["compare", str(old)], ["likelihood", str(old)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "'moons.csv'" in err and "--data" in err and "Traceback" not in err


# --- 4. counts are honoured ----------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["--n", "--steps", "--batch-size"])
def test_sample_refuses_a_count_below_one(run_dir, capsys, flag):
    assert main(["sample", str(run_dir), flag, "0"]) == 2
    assert f"{flag} must be a positive integer, got 0" in capsys.readouterr().err


def test_inpaint_n_takes_that_many_rows_of_a_file_and_shows_the_imputed_coordinate(tmp_path, figures):
    x = np.random.default_rng(1).normal(size=(50, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    run = tmp_path / "run3"
    assert main(["train", "--data", str(tmp_path / "x.npy"), "--out", str(run), "--steps", "10", "--no-progress",
                 "model.dim=3", *TINY]) == 0
    assert main(["inpaint", str(run), "--input", str(tmp_path / "x.npy"), "--n", "4", "--start", "2",
                 "--mask", "1,1,0", "--samples", "2", "--steps", "4", "--out", str(tmp_path / "i")]) == 0
    with np.load(tmp_path / "i" / "outputs.npz") as f:
        assert f["input"].shape == (4, 3) and f["samples"].shape == (4, 2, 3)
        np.testing.assert_array_equal(f["input"], x[2:6])
    axes = [a for a in figures["panel.png"].axes if a.get_title()]
    assert axes and all("x[2]" in a.get_ylabel() and "x[0]" in a.get_xlabel() for a in axes)
    summary = json.loads((tmp_path / "i" / "summary.json").read_text())
    assert summary["n"] == 4


# --- 5. progress bars only on a terminal; demo reruns say what they reuse ---------------------------
class _Tty(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream,no_progress,want", [(io.StringIO(), False, False), (_Tty(), False, True),
                                                     (_Tty(), True, False)])
def test_bars_only_on_a_terminal(stream, no_progress, want):
    from scoregen.cli.common import show_progress

    class Args:
        pass

    a = Args()
    a.no_progress = no_progress
    assert show_progress(a, stream) is want


def test_training_into_a_log_writes_no_bar_redraws(tmp_path, capsys):
    assert main(["train", "--data", "seed", "--out", str(tmp_path / "r"), "--steps", "30", *TINY]) == 0
    err = capsys.readouterr().err
    assert "it/s" not in err and "\r" not in err


def test_demo_rerun_says_it_reuses_the_run_and_keeps_other_samplers(tmp_path, capsys, figures):
    out = str(tmp_path / "demo")
    base = ["demo", "--out", out, "--steps", "30", "--n", "64", "--no-progress", *TINY]
    assert main(base + ["--samplers", "dpmpp2m", "ddim"]) == 0
    first = json.loads(Path(out, "metrics.json").read_text())
    capsys.readouterr()
    assert main(base + ["--samplers", "ddim"]) == 0
    said = capsys.readouterr().out
    assert "reusing the trained run" in said and "--fresh" in said and "kept the results of dpmpp2m" in said
    second = json.loads(Path(out, "metrics.json").read_text())
    assert set(second["samplers"]) == {"dpmpp2m", "ddim"}
    assert second["samplers"]["dpmpp2m"] == first["samplers"]["dpmpp2m"]
    # 7. the metrics name the target shares and say when the samplers are at the floor
    assert second["target_shares"] == pytest.approx([1 / 3] * 3)
    assert isinstance(second["verdict"], str) and second["verdict"]
    for r in second["samplers"].values():
        assert r["at_noise_floor"] == (r["energy_distance"] <= second["energy_distance_floor"]["p95"])
    # 7. the pictures: ED spelt out, axes named, pairs in rows with a colour bar, legends
    samples = figures["samples.png"]
    titled = [a for a in samples.axes if a.get_title()]
    assert all(a.get_xlabel() == "x[0]" and a.get_ylabel() == "x[1]" for a in titled)
    assert any("energy distance" in a.get_title() for a in titled)
    assert not any(re.search(r"\bED\b", a.get_title()) for a in titled)
    field = figures["score_field.png"]
    assert any(a.get_label() == "<colorbar>" for a in field.axes)
    panels = [a for a in field.axes if a.get_label() != "<colorbar>" and a.get_title()]
    rows = [panels[i:i + 2] for i in range(0, len(panels), 2)]
    assert len(rows) == 3
    for exact, learned in rows:  # one noise level per row: exact | learned
        assert exact.get_title().startswith("exact") and learned.get_title().startswith("learned")
        assert exact.get_title().split("noise std")[1] == learned.get_title().split("noise std")[1]
    traj = figures["trajectories.png"]
    assert all(a.get_legend() is not None for a in traj.axes if a.get_title())


# --- 6. compare's summary in words, an estimate up front ----------------------------------------------
def test_compare_summary_has_no_none_and_names_the_best_overall(run_dir, tmp_path, capsys):
    assert main(["compare", str(run_dir), "--samplers", "ddim", "dpmpp2m", "--nfe", "2", "6", "--n", "32",
                 "--out", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "None" not in out
    first = out.splitlines()[0]
    assert "score evaluations" in first and "about" in first and "16" in first  # 2 x (2 + 6) NFE, before any row
    res = json.loads((tmp_path / "c" / "compare.json").read_text())
    values = [(r["value"], s, r["nfe"]) for s, rows in res["table"].items() for r in rows]
    best = res["summary"]["best_overall"]
    assert (best["value"], best["sampler"], best["nfe"]) == min(values)
    assert "largest budget (NFE <= 6)" in out


def test_compare_summary_lines_say_never_rather_than_none():
    from scoregen.cli.compare import summarize, summary_lines

    table = {"a": [{"budget": 10, "nfe": 10, "value": 3.0}, {"budget": 100, "nfe": 100, "value": 1.0}],
             "b": [{"budget": 10, "nfe": 9, "value": 0.9}, {"budget": 100, "nfe": 99, "value": 5.0}]}
    s = summarize(table, {"mean": 0.1, "std": 0.01})
    assert s["best_overall"] == {"sampler": "b", "nfe": 9, "value": 0.9, "budget": 10}
    lines = summary_lines(s, "energy_distance", {"mean": 0.1, "std": 0.01})
    text = "\n".join(lines)
    assert "None" not in text and "never at the floor" in text and "best in the whole table: b at NFE 9" in text


# --- 7. pictures and the demo's verdict --------------------------------------------------------------
def test_scatters_of_more_than_two_dimensions_name_their_coordinates(tmp_path, figures):
    x = np.random.default_rng(0).normal(size=(40, 4))
    plots.scatter_panels({"a": x, "b": x}, tmp_path / "s.png", coords=(1, 3))
    for a in figures["s.png"].axes:
        if a.get_title():
            assert a.get_xlabel() == "x[1] (of D=4)" and a.get_ylabel() == "x[3] (of D=4)"


def test_image_panels_have_column_headings_and_are_not_thumbnails(tmp_path, figures):
    from PIL import Image

    from scoregen.cli._steering import image_panel

    rows = [[torch.rand(1, 28, 28) for _ in range(4)] for _ in range(2)]
    heads = ["observed", "sample 1", "sample 2", "truth"]
    path = image_panel(rows, tmp_path / "panel.png", heads)
    titles = [a.get_title() for a in figures["panel.png"].axes[:4]]
    assert titles == heads
    with Image.open(path) as im:
        assert min(im.size) > 244


def test_ranking_names_no_best_when_all_are_at_the_floor():
    from scoregen.cli.demo import ranking

    floor = {"mean": 0.02, "std": 0.01, "p95": 0.04}
    best, verdict = ranking({"a": {"energy_distance": 0.03}, "b": {"energy_distance": 0.02}}, floor)
    assert best is None and "all 2 samplers are at the noise floor" in verdict
    best, verdict = ranking({"a": {"energy_distance": 0.03}, "b": {"energy_distance": 0.5}}, floor)
    assert best == "a" and "at the noise floor" in verdict
    best, verdict = ranking({"a": {"energy_distance": 0.3}, "b": {"energy_distance": 0.5}}, floor)
    assert best == "a" and "above the noise floor" in verdict
    assert ranking({"a": {"energy_distance": 0.3}, "b": {"energy_distance": 0.5}}, None)[0] == "a"


# --- 8. the library -------------------------------------------------------------------------------------
def test_exact_mixture_score_gives_the_exact_likelihood():
    from scoregen.distributions import seed_mixture
    from scoregen.likelihood import log_likelihood
    from scoregen.sde import VPSDE

    sde, gm = VPSDE(), seed_mixture()
    x = gm.sample(4, generator=torch.Generator().manual_seed(3))
    at_t = gm.log_prob_fn(sde)
    res = log_likelihood(gm.score_fn(sde), sde, x, divergence="exact",
                         prior_logp=lambda z: at_t(z, torch.full((len(z),), float(sde.T))))
    eps = torch.full((4,), float(sde.eps), dtype=torch.float64)
    want = gm.log_prob(x, sde.alpha(eps), sde.std(eps))
    assert (res.logp - want).abs().max() < 1e-3 * gm.dim  # TOL_PER_DIM of test_likelihood


def _readme_blocks():
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_examples_run(run_dir, tmp_path, monkeypatch):
    blocks = _readme_blocks()
    trained = [b for b in blocks if "load_run" in b]
    assert len(blocks) >= 2 and trained, "the README shows how to load a trained run from Python"
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "mix").symlink_to(run_dir)
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        scope = {}
        exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 (the project's own README)
    assert torch.isfinite(scope["nll"]).all() and scope["nll"].shape == (200,)


def test_likelihood_of_points_says_bits_per_dim_is_for_images(run_dir, tmp_path, capsys):
    from scoregen.cli.likelihood import HELP

    assert "for images" in HELP
    out = tmp_path / "l.json"
    assert main(["likelihood", str(run_dir), "--n", "4", "--rtol", "1e-3", "--atol", "1e-3", "--out", str(out),
                 "--no-progress"]) == 0
    s = json.loads(out.read_text())
    assert s["bpd_mean"] is None and "images" in s["bpd_note"]
    assert "bits/dim applies to images" in capsys.readouterr().out


def test_missing_mnist_names_the_cli_override(tmp_path):
    from scoregen.images import load_mnist

    with pytest.raises(FileNotFoundError, match="data.download=true"):
        load_mnist("train", data_dir=tmp_path)
