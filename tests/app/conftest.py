"""AppTest fixtures: a workspace per test with a hand-built run, and a page opener."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.app.fixtures import build_run
from tests.session_builds import build_once

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty QuantLens workspace."""
    h = tmp_path / "ws"
    h.mkdir()
    monkeypatch.setenv("QUANTLENS_HOME", str(h))
    return h


@pytest.fixture
def crafted(home: Path) -> Path:
    """A workspace holding one hand-built run (float16 agrees, int8 flips 6 of 40, int16x8 crashed)."""
    return build_run(home, flips={"float16": 0, "int8": 6})


OpenPage = Callable[..., AppTest]


@pytest.fixture
def open_page() -> OpenPage:
    """Open app.py, then switch to `views/<name>.py`; optional session values set before."""

    def _open(name: str, *, state: dict[str, object] | None = None, timeout: float = 60) -> AppTest:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout)
        for k, v in (state or {}).items():
            at.session_state[k] = v
        at.switch_page(f"views/{name}.py")
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return _open


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory: pytest.TempPathFactory, built_demo: Path) -> Path:
    """A workspace with the real demo (the session's one build) and one real run (float16,
    int8) in runs/, made once per test run with the real engine (`python -m core run`)."""
    import os
    import shutil
    import subprocess
    import sys

    from core.inputs.demo_paths import demo_paths

    def build(h: Path) -> None:
        shutil.copytree(built_demo, h / "demo", symlinks=True)
        env = dict(os.environ, QUANTLENS_HOME=str(h), TF_CPP_MIN_LOG_LEVEL="3")
        paths = demo_paths(h)
        out = h / "runs" / "20250101-000000-demo01"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "core",
                "run",
                str(paths.saved_model),
                "--data",
                str(paths.data_csv),
                "--modes",
                "float16,int8",
                "--out",
                str(out),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=900,
            check=False,
        )
        assert done.returncode in (0, 1), done.stderr.decode()[-2000:]
        assert (out / "report.json").is_file() and (out / "job.json").is_file()

    return build_once(tmp_path_factory, "demo_home", build)


@pytest.fixture
def real_home(demo_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the app at the session's real-engine workspace."""
    monkeypatch.setenv("QUANTLENS_HOME", str(demo_home))
    return demo_home


@pytest.fixture
def fresh_demo_home(demo_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A new workspace holding a copy of the built demo and no runs (for launching a run)."""
    import shutil

    h = tmp_path / "ws"
    shutil.copytree(demo_home / "demo", h / "demo", symlinks=True)
    monkeypatch.setenv("QUANTLENS_HOME", str(h))
    return h


@pytest.fixture
def derived_home(
    tmp_path_factory: pytest.TempPathFactory, built_demo: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The session's real run with derived variants (keep-float, auto-fix, re-scored)."""
    from tests.app.derived_fixtures import derived_run_home

    h = derived_run_home(tmp_path_factory, built_demo)
    monkeypatch.setenv("QUANTLENS_HOME", str(h))
    return h


@pytest.fixture
def two_runs(
    demo_home: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """A private copy of the workspace holding the real runs "A" (float16) and "B" (int8)."""
    from tests.app.history_fixtures import copy_workspace, two_run_home

    h = copy_workspace(two_run_home(demo_home, tmp_path_factory), tmp_path / "ws")
    monkeypatch.setenv("QUANTLENS_HOME", str(h))
    return h
