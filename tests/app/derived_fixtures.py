"""A real run whose variants are derived from another: one kept in float by `--modes`, one
added by `--auto-fix`, one added by a re-score (`python -m core rescore`).

Built once per test run with the real engine on tests/core's outlier model (int8 fails
there; 16-bit activations for its two damaged layers, the ladder's cheapest rung that applies
to this SavedModel, fix it), in about half a minute.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.core.test_autofix import build_outlier_model
from tests.core.test_cli import run_cli
from tests.core.test_selective import _write_images
from tests.session_builds import build_once

KEEP_FLOAT = "int8:keep=wide"  # named in --modes
AUTO_FIX = "int8_q:int16=mix+wide"  # what --auto-fix derives (the outlier conv and its reader)
RESCORED = "int8:keep=mix"  # what the re-score adds


def derived_run_home(factory: pytest.TempPathFactory, built_demo: Path) -> Path:
    """A workspace holding one run with the parent int8, the pivot and three derived variants,
    and the session's demo (without it, Setup would start a demo build, half a minute of CPU)."""

    def build(home: Path) -> None:
        shutil.copytree(built_demo, home / "demo", symlinks=True)
        model = build_outlier_model(home / "outlier")
        data = _write_images(home / "data")
        common = ["--preprocess", "unit", "--min-agreement", "99", "--latency-runs", "3"]
        done = run_cli(
            "run",
            str(model),
            "--data",
            str(data),
            "--modes",
            f"int8,{KEEP_FLOAT}",
            "--auto-fix=2",
            "--name",
            "derived",
            *common,
            home=home,
        )
        assert done.returncode in (0, 1), done.stderr[-2000:]
        (run_dir,) = (home / "runs").iterdir()
        done = run_cli(
            "rescore", str(run_dir), "--variant", "int8", "--keep-float", "mix", home=home
        )
        assert done.returncode in (0, 1), done.stderr[-2000:]
        names = [v["name"] for v in report(home)["variants"]]
        assert {KEEP_FLOAT, AUTO_FIX, RESCORED} <= set(names), names

    return build_once(factory, "derived", build)


def report(home: Path) -> dict[str, Any]:
    """report.json of the workspace's one run."""
    (path,) = (home / "runs").glob("*/report.json")
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]
