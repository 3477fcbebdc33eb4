"""Removing the uploads no run needs any more, at server start.

An upload that a run in the store points at, or that a run folder launched with it still exists
for, is kept as long as that run exists; one whose runs were all deleted is removed; one never
used by a run is removed after `MAX_IDLE_HOURS` without being picked again. The upload folder's
layout (core.inputs.uploads) records which runs used it and when it was last picked.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from core.errors import QuantLensError
from core.history.store import open_store
from core.inputs.rundir import runs_root, workspace_home
from core.inputs.uploads import PICKED, USED_BY, upload_folder, uploads_root

MAX_IDLE_HOURS = 24.0


def _recorded_runs(folder: Path) -> list[str]:
    try:
        return [p.name for p in (folder / USED_BY).iterdir()]
    except OSError:
        return []


def _idle_hours(folder: Path, now: float) -> float:
    marker = folder / PICKED
    try:
        last = marker.stat().st_mtime if marker.exists() else folder.stat().st_mtime
    except OSError:
        return 0.0
    return (now - last) / 3600.0


def remove_stale_uploads(
    referenced: Iterable[str],
    *,
    home: Path | None = None,
    now: float | None = None,
    max_idle_hours: float = MAX_IDLE_HOURS,
) -> list[Path]:
    """Remove the uploads no run needs any more (the rule is in the module docstring).

    Args:
        referenced: every model and data path the runs in the store point at.
        home: the workspace.
        now: the current time (seconds since the epoch); default time.time().
        max_idle_hours: how long an upload never used by a run is kept after it was last picked.

    Returns:
        The upload folders that were removed.
    """
    root = uploads_root(home)
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    runs = runs_root(home or workspace_home())
    kept = {folder for p in referenced if (folder := upload_folder(p, home=home)) is not None}
    removed: list[Path] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        if folder.resolve() in kept:
            continue
        users = _recorded_runs(folder)
        if any((runs / run_id).exists() for run_id in users):
            continue  # a run folder still holds it (e.g. its row is in a database moved aside)
        if users or _idle_hours(folder, now) > max_idle_hours:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def clean_workspace_uploads(*, home: Path | None = None) -> list[Path]:
    """At server start: remove stale uploads, keeping everything any stored run points at.

    A store that cannot be read removes nothing: without the list of runs, no upload is known
    to be unused.
    """
    try:
        store = open_store(home or workspace_home())
        try:
            rows = store.list_runs(limit=2**31 - 1)
        finally:
            store.close()
    except QuantLensError:
        return []
    referenced = [p for row in rows for p in (row.model_path, row.data_path) if p]
    return remove_stale_uploads(referenced, home=home)
