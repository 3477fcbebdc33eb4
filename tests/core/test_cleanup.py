"""Deleting runs: rows and owned run folders go together, or neither does."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.errors import StoreError
from core.history.cleanup import delete_run
from core.history.store import DB_NAME, RunStore, open_store
from core.inputs.rundir import runs_root
from core.types import JobSpec, RunStatus
from tests.core.store_rows import store_variants


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RunStore]:
    s = open_store(tmp_path)
    yield s
    s.close()


def _new_run(store: RunStore, run_dir: Path, run_id: str) -> Path:
    run_dir.mkdir(parents=True, exist_ok=True)
    job = JobSpec(model_path="/models/m.keras", data_path="/data/d.csv", variants=("int8",))
    store.create_run(run_id, name=f"run {run_id}", run_dir=run_dir, job=job.to_dict())
    return run_dir


def _variant(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "mode": name,
        "status": "done",
        "size_bytes": 1000,
        "top1_agreement_pct": 99.0,
        "latency_ms": {"min": 1.0, "p50": 2.0, "p90": 3.0, "p99": 4.0, "mean": 2.1, "n": 50},
    }


def _rows(home: Path, table: str, run_id: str) -> int:
    con = sqlite3.connect(home / DB_NAME)
    try:
        column = "id" if table == "runs" else "run_id"
        row = con.execute(f"SELECT count(*) FROM {table} WHERE {column} = ?", (run_id,)).fetchone()
        return int(row[0])
    finally:
        con.close()


def test_delete_removes_rows_and_files(tmp_path: Path, store: RunStore) -> None:
    run_dir = _new_run(store, runs_root(tmp_path) / "gone", "gone")
    keep_dir = _new_run(store, runs_root(tmp_path) / "kept", "kept")
    (run_dir / "int8.tflite").write_bytes(b"x" * 100)
    (run_dir / "sub").mkdir()
    (run_dir / "sub" / "f.txt").write_text("y")
    store_variants(store, "gone", _variant("int8"))
    assert _rows(tmp_path, "latency", "gone") == 1

    with pytest.raises(StoreError, match=r"is still queued; cancel it, then delete it$"):
        delete_run(store, "gone")
    assert run_dir.is_dir()

    store.set_status("gone", RunStatus.DONE)
    delete_run(store, "gone")
    assert store.get_run("gone") is None
    assert not run_dir.exists()
    assert not list(runs_root(tmp_path).glob(".deleted-*"))
    assert keep_dir.is_dir()
    assert store.get_run("kept") is not None
    for table in ("runs", "variants", "latency"):
        assert _rows(tmp_path, table, "gone") == 0
    with pytest.raises(StoreError, match=r"^no run 'gone'"):
        delete_run(store, "gone")


def test_delete_never_removes_a_folder_outside_the_workspace(tmp_path: Path) -> None:
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    with open_store(tmp_path / "ws") as s:
        _new_run(s, outside, "r")
        s.set_status("r", RunStatus.FAILED, error="boom")
        delete_run(s, "r")
        assert s.get_run("r") is None
    assert (outside / "keep.txt").read_text() == "mine"


def test_a_locked_database_puts_the_folder_back(tmp_path: Path) -> None:
    s = RunStore(tmp_path / DB_NAME, busy_timeout_ms=100)
    try:
        run_dir = _new_run(s, runs_root(tmp_path) / "r", "r")
        (run_dir / "int8.tflite").write_bytes(b"model")
        s.set_status("r", RunStatus.DONE)
        other = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock past the timeout
        try:
            with pytest.raises(StoreError, match="locked by another process"):
                delete_run(s, "r")
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert (run_dir / "int8.tflite").read_bytes() == b"model"  # the files are back
        assert not list(runs_root(tmp_path).glob(".deleted-*"))
        assert s.get_run("r") is not None  # and the row never went
        delete_run(s, "r")  # once the lock is gone, the delete goes through
        assert not run_dir.exists()
    finally:
        s.close()
