"""Suite-wide guard: a test that is not marked slow (or e2e) must not load TensorFlow; and the
demo, built once per test run for every test that needs it.

`make test-fast` runs `-m "not slow and not e2e"` and promises seconds, not the minute that
importing TensorFlow and building models costs. The check runs at teardown, after the test's
fixtures were set up, so a session fixture that builds a model is caught too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# No test wants the MobileNetV2 demo trained behind its back: a first launch would chain that
# build in a detached worker that outlives the test (core.jobs.demo_jobs.CHAIN_ENV).
os.environ.setdefault("QUANTLENS_MOBILENET_DEMO", "0")

HEAVY = ("tensorflow", "keras")
_LOADED_BEFORE = pytest.StashKey[bool]()


def _heavy_loaded() -> bool:
    return any(name in sys.modules for name in HEAVY)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.stash[_LOADED_BEFORE] = _heavy_loaded()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    marked = item.get_closest_marker("slow") or item.get_closest_marker("e2e")
    if not marked and not item.stash.get(_LOADED_BEFORE, True) and _heavy_loaded():
        pytest.fail(
            f"{item.nodeid} loaded TensorFlow/Keras but is not marked slow: "
            "mark it @pytest.mark.slow or keep it off the model path",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def built_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small demo (`python -m core demo --only small --out`), built once per test run: the
    app tests and the browser tests copy it into their workspaces (a build trains a model)."""
    root = tmp_path_factory.mktemp("built_demo") / "demo"
    env = dict(os.environ, QUANTLENS_HOME=str(root.parent), TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run(
        [sys.executable, "-m", "core", "demo", "--only", "small", "--out", str(root)],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        check=True,
        capture_output=True,
        timeout=900,
    )
    return root
