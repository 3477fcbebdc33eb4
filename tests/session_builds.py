"""Heavy test inputs (the demo, real runs, tiny models) built once per test run, however many
pytest-xdist workers the run has.

A session fixture is per process: with `-n 3` each worker would train the demo and make the
same real runs again. `build_once` puts the build in a folder every worker of the run sees
(the parent of the workers' base temp folders) and takes a file lock around it, so the first
worker to ask builds and the others wait for it and reuse the result. Readers must copy what
they change, as they already did when one process shared the build among its tests.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock


def shared_root(factory: pytest.TempPathFactory) -> Path:
    """The folder this test run's workers share: xdist gives each worker `<run>/<gwN>`."""
    base = factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-builds"
    root.mkdir(exist_ok=True)
    return root


def build_once(factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """`<shared>/<name>`, filled by `build(folder)` the first time any worker of the run asks.

    A build that raised is not retried by the next worker (it would fail the same way, after
    the same minutes): that worker fails at once, naming the first failure."""
    shared = shared_root(factory)
    folder, done, failed = (shared / name, shared / f"{name}.done", shared / f"{name}.failed")
    with FileLock(shared / f"{name}.lock"):
        if failed.exists():
            pytest.fail(f"building {name} failed in another worker: {failed.read_text()}")
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            try:
                build(folder)
            except BaseException as error:
                failed.write_text(f"{type(error).__name__}: {error}"[-2000:], encoding="utf-8")
                raise
            done.touch()
    return folder
