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


def test_import_core_stays_light() -> None:
    code = (
        "import sys, core, core.results, core.figures, core.types, core.rundir;"
        "heavy = sorted(m for m in ('tensorflow', 'keras', 'ai_edge_litert', 'streamlit')"
        " if m in sys.modules); print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip() == ""


def test_layering_check_detects_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from tensorflow import lite\nimport keras.layers\n")
    assert _imports(bad) & HEAVY == {"tensorflow", "keras"}
