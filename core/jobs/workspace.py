"""The workspace a job process works in: its folder, its run store, and where children start."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from core.history.store import RunStore, open_store
from core.inputs import rundir

# The directory that holds core/: worker subprocesses start there so `-m core...` resolves to
# this source tree, whatever the caller's working directory.
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def resolved_home(home: Path | None) -> Path:
    """The workspace folder: `home`, else $QUANTLENS_HOME or ./workspace; absolute."""
    return (home or rundir.workspace_home()).resolve()


def run_dir(run_id: str, *, home: Path | None = None) -> Path:
    """The run directory of a run id in the workspace."""
    return rundir.runs_root(resolved_home(home)) / run_id


@contextlib.contextmanager
def opened_store(home: Path | None) -> Iterator[RunStore]:
    """The workspace's run store, closed on the way out."""
    store = open_store(resolved_home(home))
    try:
        yield store
    finally:
        store.close()
