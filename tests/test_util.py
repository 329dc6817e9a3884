"""The shared vocabulary: one name rule, one "choose one of" message, argument checks, atomic writes."""
import pytest
import torch

from scoregen.util import Registry, atomic_write, check_eps, check_positive_int, normalize_name, time_vector


def test_one_name_rule_and_message():
    assert normalize_name("DPM++2M") == normalize_name("dpmpp2m") == normalize_name("dpm_pp-2m")
    r = Registry("widget", {"sub-vp": 1, "ode_heun": 2}, {"heun_ode": "ode_heun"})
    assert r.lookup("SubVP") == 1 and r.lookup("ode-heun") == 2 and r.key("HEUN_ODE") == "ode_heun"
    with pytest.raises(ValueError, match=r"unknown widget 'nope'; choose one of \['ode_heun', 'sub-vp'\]"):
        r.lookup("nope")
    with pytest.raises(ValueError, match="reads as the existing"):
        r["sub_vp"] = 3


def test_checks_and_time_vector():
    assert check_positive_int(3.0, "steps") == 3
    for bad in (0, 2.5, True, "x"):
        with pytest.raises(ValueError, match="steps must be a positive integer"):
            check_positive_int(bad, "steps")
    assert check_eps(None, 1.0, 1e-3) == 1e-3
    with pytest.raises(ValueError, match=r"eps must lie in \(0, T=1.0\)"):
        check_eps(1.5, 1.0)
    x = torch.zeros(3, 2, dtype=torch.float64)
    for t in (0.5, torch.tensor(0.5), torch.full((3,), 0.5)):
        assert torch.equal(time_vector(t, x), torch.full((3,), 0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        time_vector(torch.zeros(2), x)


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    p = atomic_write(tmp_path / "a.txt", "one")
    assert p.read_text() == "one"

    def crash(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(p, crash)
    assert p.read_text() == "one" and [q.name for q in tmp_path.iterdir()] == ["a.txt"]
