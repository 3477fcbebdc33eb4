"""Two real runs ("A": float16; "B": int8 with 50 calibration images) for History/Compare tests.

Built once per test run with the real engine on the session's demo, then copied per test
(with the store's run folders re-rooted) so a test may rename or delete freely.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core.history.store import DB_NAME
from tests.session_builds import build_once

ROOT = Path(__file__).resolve().parents[2]


def two_run_home(demo_home: Path, factory: pytest.TempPathFactory) -> Path:
    """A workspace with runs "A" and "B" made by `python -m core run` (built once per test run)."""

    def build(h: Path) -> None:
        shutil.copytree(demo_home / "demo", h / "demo", symlinks=True)
        env = dict(os.environ, QUANTLENS_HOME=str(h), TF_CPP_MIN_LOG_LEVEL="3")
        jobs = [
            ["--modes", "float16", "--name", "A"],
            ["--modes", "int8", "--calibration-samples", "50", "--name", "B"],
        ]
        # One after the other: the store orders runs by creation time, and B must be the newest.
        for args in jobs:
            done = subprocess.run(
                [sys.executable, "-m", "core", "run", *args],
                cwd=ROOT,
                env=env,
                capture_output=True,
                timeout=900,
                check=False,
            )
            assert done.returncode in (0, 1), done.stderr.decode()[-2000:]

    return build_once(factory, "two_runs", build)


def copy_workspace(src: Path, dst: Path) -> Path:
    """Copy a workspace and point the store's run folders, model and data paths at the copy."""
    shutil.copytree(src, dst, symlinks=True)
    conn = sqlite3.connect(dst / DB_NAME)
    try:
        for column in ("run_dir", "model_path", "data_path"):
            conn.execute(
                f"UPDATE runs SET {column} = replace({column}, ?, ?)", (str(src), str(dst))
            )
        conn.commit()
    finally:
        conn.close()
    return dst


def reports(home: Path) -> dict[str, dict[str, Any]]:
    """report.json of every run in the workspace, keyed by run name."""
    out = {}
    for path in sorted((home / "runs").glob("*/report.json")):
        rep = json.loads(path.read_text(encoding="utf-8"))
        out[rep["run"]["name"]] = rep
    return out
