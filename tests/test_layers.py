"""The import graph obeys the layers of CONTRIBUTING.md (scoregen.tools.layers): no cycle, no import from
a higher layer, no private name imported across modules, no cli/ code in benchmarks/."""
import subprocess
import sys

from scoregen.tools import layers


def test_package_passes_the_layer_check():
    assert layers.check() == []


def test_every_module_has_a_layer():
    assert [m for m in layers.modules() if m and layers.layer_of(m) is None] == []


def test_the_check_finds_each_kind_of_problem(tmp_path, monkeypatch):
    pkg = tmp_path / "scoregen"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "low.py").write_text("from .high import thing\n")            # upward import, and a cycle
    (pkg / "high.py").write_text("from .low import _secret\nthing = 1\n")  # private name
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "b.py").write_text("from scoregen.cli.compare import measure\n")
    monkeypatch.setattr(layers, "ROOT", pkg)
    monkeypatch.setattr(layers, "LAYERS", [("root", [""]), ("low", ["low"]), ("high", ["high"])])
    found = "\n".join(layers.check())
    assert "low (layer 'low') imports high from the higher layer 'high'" in found
    assert "imports the private name '_secret' from low" in found
    assert "import cycle: high -> low -> high" in found
    assert "benchmarks/b.py:1: imports scoregen.cli.compare" in found


def test_runs_as_a_module():
    out = subprocess.run([sys.executable, "-m", "scoregen.tools.layers"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stdout + out.stderr
