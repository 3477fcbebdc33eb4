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

from tests.session_builds import build_once

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


# Tests that start or join a Ray cluster run on one xdist worker, one after another: two Rays on
# one host would share /tmp/ray (where a driver without an address looks for a cluster), and
# the session's Ray head (tests/core/conftest.py) is then started once per run, not per worker.
RAY_GROUP = "ray"
RAY_FIXTURES = {"ray_address", "ray_connected"}


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook turns the group into the test's id
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is None and RAY_FIXTURES & set(
            getattr(item, "fixturenames", ())
        ):
            item.add_marker(pytest.mark.xdist_group(RAY_GROUP))
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Longest work first, so that no worker starts a minutes-long file while the other has
        # nothing left: the Ray group, then files with browser tests, then files that build
        # models, then the rest. Each file keeps its own order (both workers sort alike).
        rank = {}
        for item in items:
            scope = _scope(item)
            mine = 0 if scope == RAY_GROUP else 1 if item.get_closest_marker("e2e") else 2
            if mine == 2 and item.get_closest_marker("slow") is None:
                mine = 3
            rank[scope] = min(rank.get(scope, 3), mine)
        items.sort(key=lambda item: rank[_scope(item)])


def _scope(item: pytest.Item) -> str:
    """The unit the scheduler below hands to a worker: the test's xdist group, else its file."""
    group = item.get_closest_marker("xdist_group")
    if group is not None:
        return str(group.args[0] if group.args else group.kwargs.get("name", "default"))
    return item.nodeid.split("::", 1)[0]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """Hand out whole files (so a module's fixtures, which build models or make CLI runs, are
    made once), except that tests marked `xdist_group` go together wherever they are; in the
    collection's order, which the hook above puts longest first."""
    from xdist.scheduler import LoadScopeScheduling

    class FileOrGroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.rfind("@") > nodeid.rfind("]"):  # xdist's `@group` suffix (loadgroup)
                return nodeid.rsplit("@", 1)[-1]
            return nodeid.split("::", 1)[0]

    config.option.loadscopereorder = False
    return FileOrGroupScheduling(config, log)


@pytest.fixture(scope="session")
def built_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small demo (`python -m core demo --only small --out`), built once per test run (by
    one xdist worker for all): the app tests and the browser tests copy it into their
    workspaces (a build trains a model)."""

    def build(home: Path) -> None:
        env = dict(os.environ, QUANTLENS_HOME=str(home), TF_CPP_MIN_LOG_LEVEL="3")
        subprocess.run(
            [sys.executable, "-m", "core", "demo", "--only", "small", "--out", str(home / "demo")],
            cwd=Path(__file__).resolve().parents[1],
            env=env,
            check=True,
            capture_output=True,
            timeout=900,
        )

    return build_once(tmp_path_factory, "built_demo", build) / "demo"
