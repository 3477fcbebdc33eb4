"""A real run of the embedded outlier-channel demo (int8 collapses from one outlier activation
channel), built once per test session: `python -m core demo --only outlier` on a copy of the
session's small demo, then `python -m core run ... --modes int8`, whose diagnosis names the
cause."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.inputs import rundir
from core.inputs.demo_paths import outlier_demo_paths
from tests.app.conftest import ROOT

CALIBRATION = 50  # calibration images the causes are measured on (core.engine.causes.MAX_IMAGES)
KEEP_CHAIN = "int8:keep=conv2+conv3+pool2"  # the keep-in-float rung of the outlier's chain
_BUILT: dict[str, Path] = {}


def _run(*args: str, home: Path) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, QUANTLENS_HOME=str(home), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-m", "core", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=900,
        check=False,
    )


def outlier_run_home(demo: Path, factory: pytest.TempPathFactory) -> Path:
    """A workspace with a copy of the built small demo folder `demo`, the outlier demo built
    into it (`python -m core demo --only outlier`) and one run of it with int8 (the first
    afternoon's run)."""
    if "home" in _BUILT:
        return _BUILT["home"]
    home = factory.mktemp("outlier_demo")
    shutil.copytree(demo, home / "demo", symlinks=True)
    built = _run("demo", "--only", "outlier", home=home)
    assert built.returncode == 0, built.stderr.decode()[-2000:]
    paths = outlier_demo_paths(home)
    assert paths.ready()
    done = _run(
        "run",
        str(paths.run_model),
        "--data",
        str(paths.data_csv),
        "--modes",
        "int8",
        "--name",
        "outlier",
        "--latency-runs",
        "3",
        home=home,
    )
    assert done.returncode in (0, 1), done.stderr.decode()[-2000:]
    (run_dir,) = (home / "runs").iterdir()
    report = json.loads((run_dir / rundir.REPORT).read_text(encoding="utf-8"))
    int8 = next(v for v in report["variants"] if v["name"] == "int8")
    assert int8["diagnosis"]["causes"], "the diagnosis named no cause"
    _BUILT["home"] = home
    return home
