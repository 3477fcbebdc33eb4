"""Layering rules of DESIGN §2, checked on the source and in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"tensorflow", "keras", "ai_edge_litert", "tf_keras"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _files(*parts: str) -> list[Path]:
    out: list[Path] = []
    for part in parts:
        p = ROOT / part
        out.extend([p] if p.is_file() else sorted(p.rglob("*.py")))
    return out


def test_web_layer_never_imports_model_frameworks() -> None:
    files = _files("app.py", "pages", "ui")
    assert len(files) >= 5
    offenders = {str(f.relative_to(ROOT)): _imports(f) & HEAVY for f in files}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_core_never_imports_streamlit() -> None:
    files = _files("core")
    assert files
    offenders = [str(f.relative_to(ROOT)) for f in files if "streamlit" in _imports(f)]
    assert offenders == []


# What a module may load when it is imported: core stays a plain package (no streamlit, and
# the model frameworks only inside the functions that need them); the web layer never loads a
# model framework, since the server must stay light and never run a user's model.
# MLflow too: it is loaded only by the process that logs a finished run (core.reporting.tracking).
FORBIDDEN = {
    "core": HEAVY | {"streamlit", "mlflow"},
    "web": HEAVY | {"mlflow"},
}

# Imports each name in a fresh interpreter and prints the forbidden modules that got loaded.
_PROBE = """
import importlib, json, sys
names, forbidden = json.loads(sys.argv[1]), set(json.loads(sys.argv[2]))
for name in names:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in forbidden)))
"""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
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
        for f in _files("app.py", "pages")
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


def test_layering_check_detects_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from tensorflow import lite\nimport keras.layers\n")
    assert _imports(bad) & HEAVY == {"tensorflow", "keras"}
