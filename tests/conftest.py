"""Suite-wide guard: a test that is not marked slow (or e2e) must not load TensorFlow.

`make test-fast` runs `-m "not slow and not e2e"` and promises seconds, not the minute that
importing TensorFlow and building models costs. The check runs at teardown, after the test's
fixtures were set up, so a session fixture that builds a model is caught too.
"""

from __future__ import annotations

import os
import sys

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
