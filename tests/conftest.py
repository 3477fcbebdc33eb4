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
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.inputs.convcache import CACHE_ENV
from tests.session_builds import build_once, shared_root

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


# Under pytest-xdist (`make test` runs three) a worker gets whole test files, so that a
# module's fixtures (a model build, a CLI run) are made once. The files that start or join a
# Ray cluster go to one worker together, one after another: two Rays on one host meet in
# /tmp/ray (where a driver with no address looks for a cluster, and Ray's test cluster writes
# its address), and the session's Ray head (tests/core/conftest.py) is started once.
RAY_FILES = frozenset(
    {
        "tests/core/test_calibration_runs.py",
        "tests/core/test_ray_cluster.py",
        "tests/core/test_ray_cluster_lost.py",
        "tests/core/test_ray_engine.py",
    }
)
RAY_FIXTURES = frozenset({"ray_address", "ray_connected"})
RAY_UNIT = "ray"


def work_unit(nodeid: str) -> str:
    """What one worker runs as a whole: the test's file, or all the Ray files together."""
    path = nodeid.split("::", 1)[0]
    return RAY_UNIT if path in RAY_FILES else path


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    strays = sorted(
        {
            item.nodeid.split("::", 1)[0]
            for item in items
            if RAY_FIXTURES & set(getattr(item, "fixturenames", ()))
            and work_unit(item.nodeid) != RAY_UNIT
        }
    )
    if strays:
        raise pytest.UsageError(
            f"{', '.join(strays)} use the session's Ray: add them to RAY_FILES in tests/conftest.py"
        )
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Longest work first, so that no worker starts a minutes-long file while the other has
        # nothing left: the Ray files, then files with browser tests, then files that build
        # models, then the rest. Each file keeps its own order (every worker sorts alike).
        rank: dict[str, int] = {}
        for item in items:
            unit = work_unit(item.nodeid)
            if unit == RAY_UNIT:
                mine = 0
            elif item.get_closest_marker("e2e"):
                mine = 1
            else:
                mine = 2 if item.get_closest_marker("slow") else 3
            rank[unit] = min(rank.get(unit, 3), mine)
        items.sort(key=lambda item: rank[work_unit(item.nodeid)])


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """xdist's scheduler by scope, with `work_unit` as the scope, handing the units out in the
    collection's order (which the hook above puts longest first)."""
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnitScheduling(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    config.option.loadscopereorder = False
    return WorkUnitScheduling(config, log)


@pytest.fixture(scope="session", autouse=True)
def shared_conversion_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One conversion cache for every job this test run starts (CLI, dashboard, Ray head), on
    every xdist worker: each test gets a fresh workspace, and without this each of them converted
    the same tiny models again, the suite's largest repeated cost after TensorFlow's import. The
    cache is keyed by the model's bytes, the mode, the calibration images and the preset (its own
    tests check that), so a hit is the bytes the same conversion made; a fault injected at
    `convert` still fires, before the lookup. In-process calls pass their own `cache_dir`, and
    a test of the workspace's cache removes the variable (tests/core/test_convcache.py)."""
    folder = shared_root(tmp_path_factory) / "conversion-cache"
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous


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
