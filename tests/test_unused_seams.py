"""Seams and helpers that nothing in the product used stay gone: a grep over the source, since an
unused seam reads fine until someone builds on it and finds the engine bypasses it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "app.py", *(p for d in ("core", "ui", "views") for p in (ROOT / d).rglob("*.py"))]

# JobRunner (the pipeline's class wrapper run_job replaced), the reference stage's
# nonfinite_warnings and run_compare's changed_fields (nothing called them), and run_job's
# evaluator= seam (the Ray engine replaced the stages instead of plugging in there).
GONE = re.compile(r"\b(class JobRunner|def nonfinite_warnings|def changed_fields)\b|\bevaluator:")


def test_the_removed_seams_are_not_back() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in SOURCES
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if GONE.search(line)
    ]
    assert found == []
