"""Check the package's import graph against its layers: `python -m scoregen.tools.layers`.

The imports of every module are read with `ast` (module-level and function-level alike, so a lazy
import counts too). Three rules, each printed with the offending file and line:

  1. no cycle between modules;
  2. no import from a higher layer (`LAYERS`, the map of CONTRIBUTING.md, bottom first): a module may
     import its own layer and the ones below;
  3. no private name (`_name`) imported from another module, nor a private module from outside its
     own package (cli/_steering.py serves the cli/ commands only).

`check()` also reads benchmarks/ (beside the package) and refuses any import of scoregen.cli there.

Old paths: the package's `__init__.py` holds `MOVED_MODULES` (old module path -> new, kept for one
release by an import hook). The check reads that table with `ast` (never importing the package): every
new path must exist, no old path may be a module again, and no module of the package may import an
old path (the package itself uses the new ones). The package's `__init__.py` is the root (""), which
needs no layer. Imports inside a module-level `def __getattr__` (PEP 562: a deprecated name resolved on
first use, e.g. models/edm.py's EDMLoss) are not counted against the layers or as cycle edges.

Exit status 0 when the graph passes, 1 otherwise. `check()` returns the list of problems.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "scoregen"
ROOT = Path(__file__).resolve().parents[1]

#: bottom first, one layer per folder of the package (plus the three top-level modules util, likelihood and
#: plots); a module is named relative to the package, a trailing ".*" takes a whole folder.
LAYERS: list[tuple[str, list[str]]] = [
    ("vocabulary", ["util"]),
    ("process", ["process", "process.*"]),
    ("data", ["data", "data.*"]),
    ("models", ["models", "models.*"]),
    ("sampling and likelihood", ["sampling", "sampling.*", "likelihood"]),
    ("training", ["training", "training.*"]),
    ("steering", ["steering", "steering.*"]),
    ("interop", ["interop", "interop.*"]),
    ("runs", ["runs", "runs.*"]),
    ("evaluation", ["evaluation", "evaluation.*"]),
    ("pictures", ["plots"]),
    ("command line", ["cli", "cli.*", "__main__"]),
    ("tools", ["tools", "tools.*"]),
]


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) if parts else ""


def layer_of(mod: str) -> int | None:
    for i, (_, names) in enumerate(LAYERS):
        for n in names:
            if mod == n or (n.endswith(".*") and mod.startswith(n[:-1])):
                return i
    return None


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str | None:
    """The absolute module (relative to the package) an ImportFrom names, or None outside it."""
    if node.level == 0:
        name = node.module or ""
        if name != PACKAGE and not name.startswith(PACKAGE + "."):
            return None
        return name[len(PACKAGE) + 1:] if name != PACKAGE else ""
    base = mod.split(".") if mod else []
    if not is_pkg:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
    return ".".join(base + ([node.module] if node.module else []))


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def moved_modules() -> dict[str, str]:
    """The package's alias table `MOVED_MODULES` (old -> new, relative to the package), read with ast."""
    init = ROOT / "__init__.py"
    if not init.is_file():
        return {}
    for node in ast.parse(init.read_text(), str(init)).body:
        target = node.target if isinstance(node, ast.AnnAssign) else \
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if isinstance(target, ast.Name) and target.id == "MOVED_MODULES" and node.value is not None:
            return dict(ast.literal_eval(node.value))
    return {}


def old_path(target: str, moved: dict[str, str]) -> str | None:
    """The new path of an import of an old one (a moved module or inside a moved package), else None."""
    first, _, sub = target.partition(".")
    return None if first not in moved else moved[first] + (f".{sub}" if sub else "")


def _deferred(tree) -> set[int]:
    """ids of the import nodes inside a module-level `def __getattr__` (PEP 562 deprecated names)."""
    out = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            out |= {id(n) for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return out


def imports(mods: dict[str, Path], moved: dict[str, str] | None = None):
    """(importer, imported module, imported name or None, line, deferred) for every import inside the
    package; deferred: inside a module-level `__getattr__`."""
    moved = moved or {}
    for mod, path in mods.items():
        is_pkg = path.name == "__init__.py"
        tree = ast.parse(path.read_text(), str(path))
        deferred = _deferred(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith(PACKAGE + "."):
                        yield mod, a.name[len(PACKAGE) + 1:], None, node.lineno, id(node) in deferred
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, is_pkg, node)
                if target is None:
                    continue
                for a in node.names:
                    sub = f"{target}.{a.name}" if target else a.name
                    if sub in mods or (old_path(sub, moved) and not old_path(target, moved)):  # `from . import ode`
                        yield mod, sub, None, node.lineno, id(node) in deferred
                    else:
                        yield mod, target, a.name, node.lineno, id(node) in deferred


def check() -> list[str]:
    mods, moved = modules(), moved_modules()
    problems, graph = [], {m: set() for m in mods}
    for old, new in sorted(moved.items()):
        if old in mods:
            problems.append(f"{PACKAGE}/__init__.py: MOVED_MODULES lists {old!r}, which is a module again")
        if new not in mods:
            problems.append(f"{PACKAGE}/__init__.py: MOVED_MODULES maps {old!r} to {new!r}, which does not exist")
    for mod, target, name, line, deferred in imports(mods, moved):
        where = f"{mods[mod].relative_to(ROOT.parent)}:{line}"
        if target not in mods:
            new = old_path(target, moved)
            problems.append(f"{where}: imports the old path {PACKAGE}.{target}; use {PACKAGE}.{new}" if new else
                            f"{where}: imports {PACKAGE}.{target}, which does not exist")
            continue
        if target != mod and not deferred:
            graph[mod].add(target)
        lo, hi = layer_of(mod), layer_of(target)
        if lo is None:
            problems.append(f"{where}: module {mod!r} has no layer in scoregen.tools.layers.LAYERS")
        elif hi is not None and hi > lo and not deferred:
            problems.append(f"{where}: {mod} (layer {LAYERS[lo][0]!r}) imports {target} from the higher layer "
                            f"{LAYERS[hi][0]!r}")
        parent = target.rsplit(".", 1)[0] if "." in target else ""
        inside = mod == parent or mod.startswith(parent + ".") if parent else False
        private_mod = not inside and any(p.startswith("_") and not p.startswith("__") for p in target.split("."))
        if target != mod and ((name is not None and name.startswith("_") and not name.startswith("__")) or private_mod):
            what = f"module {target}" if private_mod else f"name {name!r} from {target}"
            problems.append(f"{where}: {mod} imports the private {what}")
    problems += [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    problems += outside_problems()
    return problems


def outside_problems() -> list[str]:
    """benchmarks/ beside the package: no import of the command line's code."""
    out = []
    folder = ROOT.parent / "benchmarks"
    for path in sorted(folder.glob("*.py")) if folder.is_dir() else []:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            if isinstance(node, ast.ImportFrom) and node.module == PACKAGE:
                names += [f"{PACKAGE}.{a.name}" for a in node.names]
            for n in names:
                if n == f"{PACKAGE}.cli" or n.startswith(f"{PACKAGE}.cli."):
                    out.append(f"benchmarks/{path.name}:{node.lineno}: imports {n}; benchmarks use library code only")
    return out


def cycles(graph: dict[str, set]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp) + [sorted(comp)[0]])

    sys.setrecursionlimit(max(1000, 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main(argv=None) -> int:
    problems = check()
    for p in problems:
        print(p)
    n = len(modules())
    print(f"{n} modules, {len(LAYERS)} layers: " + ("ok" if not problems else f"{len(problems)} problem(s)"))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
