"""Deleting runs: a finished run's rows and, when the workspace owns it, its run folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from core.errors import StoreError
from core.history.reindex import forget_folder
from core.history.store import RunStore
from core.inputs.rundir import runs_root

TRASH_PREFIX = ".deleted-"


def _owned_folder(run_dir: Path, home: Path) -> Path | None:
    """The run folder if the workspace owns it (inside its `runs/`), else None."""
    folder = run_dir.resolve()
    root = runs_root(home).resolve()
    if folder.is_dir() and folder != root and folder.is_relative_to(root):
        return folder
    return None


def _move_to_trash(folder: Path) -> Path:
    """Rename a run folder to a hidden trash name next to it (atomic: whole run or none).

    Raises:
        StoreError: the folder cannot be renamed.
    """
    trash = folder.with_name(f"{TRASH_PREFIX}{folder.name}-{os.getpid()}")
    try:
        os.rename(folder, trash)
    except OSError as exc:
        raise StoreError(
            f"cannot delete the run folder {folder}: {exc.strerror}; "
            "close programs using it and retry"
        ) from None
    return trash


def delete_run(store: RunStore, run_id: str) -> None:
    """Delete a finished run: its rows in `store` and its run directory on disk.

    The directory is first renamed to a hidden trash name (atomic), then the rows go, then
    the files; a crash in between leaves either the whole run or a trash folder, never a
    row pointing at half a directory. A directory outside the workspace's `runs/` folder is
    left on disk (only rows are removed): QuantLens never deletes files it does not own.

    Raises:
        StoreError: no such run, the run is still queued/running, or the files cannot go.
    """
    row = store.get_run(run_id)
    if row is None:
        raise StoreError(f"no run {run_id!r} in the run database; refresh the run list")
    if not row.status.finished:
        raise StoreError(
            f"run {row.name or run_id!r} is still {row.status}; cancel it, then delete it"
        )
    folder = _owned_folder(row.run_dir, store.home)
    trash = _move_to_trash(folder) if folder is not None else None
    try:
        store.remove_run(run_id)
    except BaseException:
        if folder is not None and trash is not None:
            os.rename(trash, folder)  # put the files back: the rows are still there
        raise
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    else:  # its folder stays on disk: a rebuilt index must not bring the run back
        forget_folder(store.home, row.run_dir)
