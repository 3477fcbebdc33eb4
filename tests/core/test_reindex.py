"""A corrupt run database is rebuilt from the run folders, and `history --reindex` does it on
demand: real run folders (the launcher's), a real report, real SQLite, the real CLI."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from core.history.cleanup import delete_run
from core.history.store import DB_NAME, open_store
from core.inputs import rundir
from core.jobs import outcome
from core.jobs.launch import cancel_run, create_run
from core.types import JobSpec, RunStatus

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "schema1_run"


def _job(tmp_path: Path, name: str) -> JobSpec:
    return JobSpec(
        model_path=str(tmp_path / "tiny.keras"),
        data_path=str(tmp_path / "data.csv"),
        variants=("float32", "int8"),
        name=name,
    )


def _write_report(run_dir: Path, name: str) -> None:
    """A real engine's report, named as the worker names it (after the job)."""
    report = rundir.read_json(FIXTURE / rundir.REPORT)
    report["run"]["name"] = name
    rundir.write_json_atomic(run_dir / rundir.REPORT, report)


def _make_runs(home: Path, tmp_path: Path) -> dict[str, Path]:
    """A finished run under runs/ (with a real engine's report), a cancelled CLI run in an
    --out folder outside the workspace, and a finished run renamed in the history."""
    done = create_run(_job(tmp_path, "finished one"), home=home)
    done_dir = rundir.runs_root(home) / done
    _write_report(done_dir, "finished one")
    outcome.finish_run(done_dir, RunStatus.DONE, None, home=home)

    out_dir = tmp_path / "elsewhere" / "out"
    cancelled = create_run(_job(tmp_path, "a CLI run · 10:15"), home=home, directory=out_dir)
    cancel_run(cancelled, home=home)

    renamed = create_run(_job(tmp_path, "old name"), home=home)
    renamed_dir = rundir.runs_root(home) / renamed
    _write_report(renamed_dir, "old name")
    outcome.finish_run(renamed_dir, RunStatus.DONE, None, home=home)
    with open_store(home) as store:
        store.rename_run(renamed, "new name")
    report = rundir.read_json(renamed_dir / rundir.REPORT)  # as the History page renames
    report["run"]["name"] = "new name"
    rundir.write_json_atomic(renamed_dir / rundir.REPORT, report)
    return {done: done_dir, cancelled: out_dir, renamed: renamed_dir}


def _listed(home: Path) -> dict[str, tuple[Any, ...]]:
    """What History shows of each run, read with plain SQL (not through the store)."""
    con = sqlite3.connect(home / DB_NAME)
    try:
        runs = con.execute("SELECT id, name, status, error, run_dir, created FROM runs").fetchall()
        variants = con.execute(
            "SELECT run_id, name, status, top1_agreement_pct FROM variants ORDER BY run_id, name"
        ).fetchall()
    finally:
        con.close()
    return {
        rid: (name, status, error, run_dir, [v[1:] for v in variants if v[0] == rid])
        for rid, name, status, error, run_dir, _ in runs
    }


def _created(home: Path) -> dict[str, float]:
    con = sqlite3.connect(home / DB_NAME)
    try:
        rows = con.execute("SELECT id, created FROM runs").fetchall()
    finally:
        con.close()
    return {rid: datetime.fromisoformat(created).timestamp() for rid, created in rows}


def _same_times(before: dict[str, float], after: dict[str, float]) -> bool:
    """status.json stamps a run's creation a moment before its store row does."""
    return before.keys() == after.keys() and all(
        abs(before[rid] - after[rid]) < 1.0 for rid in before
    )


def _corrupt(home: Path) -> None:
    (home / DB_NAME).write_bytes(os.urandom(8192))
    for suffix in ("-wal", "-shm"):
        Path(f"{home / DB_NAME}{suffix}").unlink(missing_ok=True)


def test_a_corrupt_database_is_rebuilt_from_the_run_folders(
    workspace: Path, tmp_path: Path
) -> None:
    runs = _make_runs(workspace, tmp_path)
    before, created = _listed(workspace), _created(workspace)
    assert set(before) == set(runs)
    statuses = sorted(entry[1] for entry in before.values())
    assert statuses == ["cancelled", "done", "done"]
    assert sorted(entry[0] for entry in before.values()) == [
        "a CLI run · 10:15",
        "finished one",
        "new name",
    ]
    assert all(len(entry[4]) == 5 for entry in before.values() if entry[1] == "done")

    _corrupt(workspace)
    with open_store(workspace) as store:
        assert store.recovered_from is not None
        assert store.reindexed == 3
        listed = {row.id: (row.name, row.status) for row in store.list_runs()}
    assert listed == {rid: (entry[0], RunStatus(entry[1])) for rid, entry in before.items()}
    assert _listed(workspace) == before  # names, statuses, errors, folders, variants
    assert _same_times(created, _created(workspace))


def test_history_reindex_adds_what_the_index_lacks_and_says_how_many(
    workspace: Path, tmp_path: Path
) -> None:
    runs = _make_runs(workspace, tmp_path)
    before = _listed(workspace)
    (workspace / DB_NAME).unlink()  # an index lost (not damaged): nothing is recovered on open
    for suffix in ("-wal", "-shm"):
        Path(f"{workspace / DB_NAME}{suffix}").unlink(missing_ok=True)
    env = {**os.environ, "QUANTLENS_HOME": str(workspace)}
    command = [sys.executable, "-m", "core", "history", "--reindex"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "indexed 3 runs from their folders (3 found, 0 were already in the history)"
    ]
    assert _listed(workspace) == before
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    assert again.stdout.splitlines() == [
        "indexed 0 runs from their folders (3 found, 3 were already in the history)"
    ]
    assert set(_listed(workspace)) == set(runs)


def test_a_run_deleted_from_the_history_is_not_brought_back(
    workspace: Path, tmp_path: Path
) -> None:
    """Its --out folder stays on disk (QuantLens never deletes what it does not own)."""
    runs = _make_runs(workspace, tmp_path)
    out_run = next(rid for rid, folder in runs.items() if folder.name == "out")
    with open_store(workspace) as store:
        delete_run(store, out_run)
        assert runs[out_run].is_dir()
        assert store.reindex() == (2, 0)
        assert store.get_run(out_run) is None
