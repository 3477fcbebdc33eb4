"""Layering rules of DESIGN §2, checked on the source and in a fresh interpreter."""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"tensorflow", "keras", "ai_edge_litert", "tf_keras"}


def _files(*parts: str, root: Path = ROOT) -> list[Path]:
    out: list[Path] = []
    for part in parts:
        p = root / part
        out.extend([p] if p.is_file() else sorted(p.rglob("*.py")))
    return out


# -- the import graph, read from the source (imports inside functions included) ---------------
#
# The rule, in one sentence: only core/engine/ imports TensorFlow, LiteRT or Ray, and only inside
# functions; only the worker (core/jobs/worker.py) imports core/engine/; nothing in core/ imports
# Streamlit. It holds for what ships (core/, ui/, views/, app.py); tests/ and bench/ drive the
# engine in-process on purpose.
PRODUCT = ("core", "ui", "views", "app.py")
MODEL_FRAMEWORKS = HEAVY | {"litert_quantizer", "ray", "tflite_micro", "ethosu"}
ENGINE = "core.engine"
WORKER = "core.jobs.worker"


@dataclass(frozen=True)
class Import:
    """One imported name, as the importing module sees it."""

    source: str  # the importing module, "core.jobs.worker"
    target: (
        str  # a module of the product ("core.engine.demo_models") or a top-level package ("numpy")
    )
    where: str  # "core/jobs/worker.py:40", for the failure message
    in_function: bool


def _modules(root: Path, *parts: str) -> dict[str, Path]:
    """Module name -> file, for every Python file under `parts` of `root`."""
    return {_module_name(f, root=root): f for f in _files(*parts, root=root)}


def _resolve(name: str, known: dict[str, Path]) -> str:
    """The longest prefix of a dotted name that is a known module, else its top-level package."""
    probe = name
    while probe:
        if probe in known:
            return probe
        probe = probe.rpartition(".")[0]
    return name.split(".")[0]


class _ImportCollector(ast.NodeVisitor):
    def __init__(self, source: str, path: Path, root: Path, known: dict[str, Path]) -> None:
        self.source, self.known = source, known
        self.relpath = path.relative_to(root).as_posix()
        # The package a relative import starts from (ruff bans them; resolved all the same).
        self.package = source if path.name == "__init__.py" else source.rpartition(".")[0]
        self.found: list[Import] = []
        self._functions = 0

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._functions += 1
        self.generic_visit(node)
        self._functions -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(_resolve(alias.name, self.known), node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            package = self.package.split(".")
            anchor = ".".join(package[: len(package) - node.level + 1])
            base = f"{anchor}.{base}" if base else anchor
        for alias in node.names:
            full = f"{base}.{alias.name}"  # `from core import posix` imports a module
            self._add(full if full in self.known else _resolve(base, self.known), node)

    def _add(self, target: str, node: ast.stmt) -> None:
        where = f"{self.relpath}:{node.lineno}"
        self.found.append(Import(self.source, target, where, self._functions > 0))


def import_graph(root: Path, *parts: str) -> list[Import]:
    """Every import in the modules under `parts`, at any depth, resolved to modules."""
    known = _modules(root, *parts)
    found: list[Import] = []
    for name, path in known.items():
        collector = _ImportCollector(name, path, root, known)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        found.extend(i for i in collector.found if i.target != name)
    return found


def import_cycles(imports: list[Import], package: str) -> list[str]:
    """The import cycles among `package`'s modules, as `a -> b -> a (where each import is)`."""
    inside = [i for i in imports if _in(i.source, package) and _in(i.target, package)]
    edges: dict[str, dict[str, str]] = {}
    for i in inside:
        edges.setdefault(i.source, {}).setdefault(i.target, i.where)
    cycles = set()
    for group in _strongly_connected(edges):
        for member in group:  # the shortest cycle through each member: every tie is named
            loop = _cycle_through(member, group, edges)[:-1]
            first = loop.index(min(loop))
            path = [*loop[first:], *loop[:first], loop[first]]
            hops = ", ".join(edges[a][b] for a, b in itertools.pairwise(path))
            cycles.add(f"{' -> '.join(path)} ({hops})")
    return sorted(cycles)


def package_cycles(imports: list[Import], package: str) -> list[str]:
    """The cycles among `package`'s packages, as `a -> b -> a (one import for each hop)`.

    A package is a direct subpackage of `package` with everything below it (`core.engine`
    holds `core.engine.stages`); a module directly in `package` stands for itself. Two
    packages that import each other, at any depth and inside functions too, cannot be
    understood, tested or moved one without the other, even when their modules form no cycle.
    """
    depth = package.count(".") + 2
    lifted = [
        Import(_top(i.source, depth), _top(i.target, depth), i.where, i.in_function)
        for i in imports
        if _in(i.source, package) and _in(i.target, package)
    ]
    return import_cycles([i for i in lifted if i.source != i.target], package)


def _top(module: str, depth: int) -> str:
    return ".".join(module.split(".")[:depth])


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _strongly_connected(edges: dict[str, dict[str, str]]) -> list[set[str]]:
    """Groups of modules that reach each other (Tarjan), the ones with a cycle only."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def _cycle_through(start: str, group: set[str], edges: dict[str, dict[str, str]]) -> list[str]:
    """The shortest way from `start` back to itself inside its group (breadth first)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(edges.get(node, {})):
                if nxt == start:
                    return [*paths[node], start]
                if nxt in group and nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{start} is in no cycle")  # a group from Tarjan always has one


def rule_breaches(imports: list[Import]) -> list[str]:
    """Each import that breaks the rule above, with where it is and what the rule says."""
    breaches = set()  # one line per statement, however many names it imports
    for i in imports:
        if i.target in MODEL_FRAMEWORKS and not _in(i.source, ENGINE):
            breaches.add(f"{i.where} imports {i.target}: only core/engine/ may")
        elif i.target in MODEL_FRAMEWORKS and not i.in_function:
            breaches.add(f"{i.where} imports {i.target} at module level: only inside functions")
        elif _in(i.target, ENGINE) and not (_in(i.source, ENGINE) or i.source == WORKER):
            breaches.add(
                f"{i.where} imports {i.target}: only core/jobs/worker.py may import core/engine/"
            )
        elif i.target == "streamlit" and _in(i.source, "core"):
            breaches.add(f"{i.where} imports streamlit: nothing in core/ may")
    return sorted(breaches)


def test_core_has_no_import_cycle() -> None:
    imports = import_graph(ROOT, "core")
    assert len({i.source for i in imports}) >= 30  # the whole package was read
    cycles = import_cycles(imports, "core")
    assert not cycles, "import cycles in core/:\n" + "\n".join(cycles)


def test_core_has_no_package_cycle() -> None:
    imports = import_graph(ROOT, "core")
    cycles = package_cycles(imports, "core")
    assert not cycles, "package cycles in core/:\n" + "\n".join(cycles)


def test_only_the_engine_loads_models_and_only_the_worker_loads_the_engine() -> None:
    imports = import_graph(ROOT, *PRODUCT)
    assert any(i.source.startswith("views.") for i in imports)  # the web layer was read too
    assert any(i.source == WORKER and _in(i.target, ENGINE) for i in imports)
    breaches = rule_breaches(imports)
    assert not breaches, "layering rule broken:\n" + "\n".join(breaches)


def test_the_graph_checks_name_each_cycle_and_each_breach(tmp_path: Path) -> None:
    sources = {
        "core/__init__.py": "",
        "core/a.py": "def f():\n    from core import b\n",
        "core/b.py": "import core.c\n",
        "core/c.py": "from core.a import f\n",
        "core/d.py": "import core.d\n",  # itself: not a cycle worth a message
        "core/engine/__init__.py": "",
        "core/engine/run.py": "import tensorflow as tf\n\ndef g():\n    import ai_edge_litert\n",
        "core/jobs/__init__.py": "",
        "core/jobs/worker.py": "def h():\n    from core.engine import run\n",
        "core/jobs/launch.py": "def k():\n    from core.engine.run import g\n",
        "core/cli.py": "import streamlit\n\ndef m():\n    import keras.layers\n",
        "core/tracking.py": "def t():\n    import ray.data\n",
        "ui/page.py": "from core.engine import run\n",
        # Packages that import each other without any module cycle: p.x -> q.y, q.z -> p.w.
        "core/p/__init__.py": "",
        "core/p/x.py": "from core.q import y\n",
        "core/p/w.py": "",
        "core/q/__init__.py": "",
        "core/q/y.py": "",
        "core/q/z.py": "def z():\n    import core.p.w\n",
    }
    for name, text in sources.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    imports = import_graph(tmp_path, "core", "ui")
    assert import_cycles(imports, "core") == [
        "core.a -> core.b -> core.c -> core.a (core/a.py:2, core/b.py:1, core/c.py:1)"
    ]
    assert package_cycles(imports, "core") == [
        "core.a -> core.b -> core.c -> core.a (core/a.py:2, core/b.py:1, core/c.py:1)",
        "core.p -> core.q -> core.p (core/p/x.py:1, core/q/z.py:2)",
    ]
    assert rule_breaches(imports) == [
        "core/cli.py:1 imports streamlit: nothing in core/ may",
        "core/cli.py:4 imports keras: only core/engine/ may",
        "core/engine/run.py:1 imports tensorflow at module level: only inside functions",
        "core/jobs/launch.py:2 imports core.engine.run: only core/jobs/worker.py may import "
        "core/engine/",
        "core/tracking.py:2 imports ray: only core/engine/ may",
        "ui/page.py:1 imports core.engine.run: only core/jobs/worker.py may import core/engine/",
    ]


# What a module may load when it is imported: core stays a plain package (no streamlit, and
# the model frameworks only inside the functions that need them); the web layer never loads a
# model framework, since the server must stay light and never run a user's model.
# MLflow too: it is loaded only by the process that logs a finished run (core.reporting.tracking),
# and Ray only by a job that runs on it (core.engine.ray_engine).
FORBIDDEN = {
    "core": HEAVY | {"streamlit", "mlflow", "ray"},
    "web": HEAVY | {"mlflow", "ray"},
}

# Imports each name in a fresh interpreter and prints the forbidden modules that got loaded.
_PROBE = """
import importlib, json, sys
names, forbidden = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))
for name in names:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in forbidden)))
"""


def _module_name(path: Path, *, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _script_imports(path: Path) -> list[str]:
    """Every absolute module a page script imports (at any depth): running it loads these."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(
                f"{node.module}.{a.name}" for a in node.names if _is_module(node.module, a.name)
            )
    return sorted(names)


def _is_module(package: str, name: str) -> bool:
    base = ROOT.joinpath(*package.split("."))
    return (base / f"{name}.py").is_file() or (base / name / "__init__.py").is_file()


def _probes() -> list[tuple[str, list[str], set[str]]]:
    """(what is checked, modules to import, modules that must not load), one per module/page."""
    # core/__main__.py is an entry point: importing it runs the command line (core.cli is probed).
    core = [f for f in _files("core") if f.name != "__main__.py"]
    probes = [(_module_name(f), [_module_name(f)], FORBIDDEN["core"]) for f in core]
    probes += [(_module_name(f), [_module_name(f)], FORBIDDEN["web"]) for f in _files("ui")]
    probes += [
        (str(f.relative_to(ROOT)), _script_imports(f), FORBIDDEN["web"])
        for f in _files("app.py", "views")
    ]
    return probes


def _loaded_forbidden(names: list[str], forbidden: set[str]) -> list[str]:
    import json

    out = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(names), json.dumps(sorted(forbidden))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if out.returncode != 0:
        return [f"import failed: {out.stderr.strip().splitlines()[-1:]}"]
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return sorted({m.split(".")[0] for m in loaded})


def _offenders(probes: list[tuple[str, list[str], set[str]]]) -> dict[str, list[str]]:
    """Each probe alone in its own fresh interpreter (in parallel): who loads what."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        found = pool.map(lambda p: (p[0], _loaded_forbidden(p[1], p[2])), probes)
        return {what: loaded for what, loaded in found if loaded}


def test_every_module_imports_without_forbidden_frameworks() -> None:
    """Every core and ui module, and every page's imports, with nothing forbidden loaded.

    One fresh interpreter per layer imports all its modules: if none of them loads a forbidden
    framework, none does alone either (imports only add to sys.modules), which keeps this fast.
    When one does, each module is probed alone in its own interpreter to name every offender.
    """
    probes = _probes()
    assert len(probes) >= 40  # core, ui and pages are all here, not a hand-picked few
    for forbidden in (FORBIDDEN["core"], FORBIDDEN["web"]):
        layer = [p for p in probes if p[2] is forbidden]
        names = [name for _, modules, _ in layer for name in modules]
        if _loaded_forbidden(names, forbidden):
            assert _offenders(layer) == {}


def test_the_probe_names_each_offender_in_isolation() -> None:
    # Stand-ins for frameworks: small stdlib modules that nothing here imports.
    fake = {"wave", "colorsys"}
    probes = [("a", ["wave"], fake), ("b", ["colorsys"], fake), ("c", ["core.types"], fake)]
    assert _loaded_forbidden(["wave", "colorsys", "core.types"], fake) == ["colorsys", "wave"]
    assert _offenders(probes) == {"a": ["wave"], "b": ["colorsys"]}


def test_no_two_modules_of_core_share_a_name() -> None:
    """One name per concept: `from core.x import demo` and `from core.y import demo` read the
    same and are not. A stage may share its name with the module whose work it drives
    (core/engine/stages/convert.py runs core/engine/convert.py)."""
    by_name: dict[str, list[str]] = {}
    for path in _files("core"):
        if path.name not in ("__init__.py", "__main__.py"):
            by_name.setdefault(path.stem, []).append(path.relative_to(ROOT).as_posix())
    shared = {
        name: paths
        for name, paths in by_name.items()
        if len([p for p in paths if not p.startswith("core/engine/stages/")]) > 1
    }
    assert shared == {}
