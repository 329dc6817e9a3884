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


def test_the_check_reads_the_alias_table(tmp_path, monkeypatch):
    pkg = tmp_path / "scoregen"
    (pkg / "new").mkdir(parents=True)
    (pkg / "__init__.py").write_text('MOVED_MODULES = {"old": "new.mod", "gone": "new.missing", "back": "new.mod"}\n')
    (pkg / "new" / "__init__.py").write_text("")
    (pkg / "new" / "mod.py").write_text("thing = 1\n")
    (pkg / "back.py").write_text("")
    (pkg / "user.py").write_text("from .old import thing\nfrom . import old\n")
    monkeypatch.setattr(layers, "ROOT", pkg)
    monkeypatch.setattr(layers, "LAYERS", [("all", ["", "new", "new.*", "user", "back"])])
    found = "\n".join(layers.check())
    assert "user.py:1: imports the old path scoregen.old; use scoregen.new.mod" in found
    assert "user.py:2: imports the old path scoregen.old; use scoregen.new.mod" in found
    assert "MOVED_MODULES maps 'gone' to 'new.missing', which does not exist" in found
    assert "MOVED_MODULES lists 'back', which is a module again" in found
