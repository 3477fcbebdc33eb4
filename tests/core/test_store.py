"""Tests of the durable run store against real SQLite files and real other processes."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from core.errors import StoreError
from core.history.schema import SCHEMA_VERSION
from core.history.store import DB_NAME, RunStore, open_store
from core.inputs.rundir import runs_root
from core.types import RunStatus
from tests.core.store_rows import store_variants, stored_latency, stored_variants

ROOT = Path(__file__).resolve().parents[2]

# The first released schema, written out literally (not imported) so this test keeps proving
# that a real v1 file from an old QuantLens opens, whatever the store's migration list says.
V1_SCHEMA = """
CREATE TABLE runs (
    id TEXT PRIMARY KEY, name TEXT NOT NULL DEFAULT '', created TEXT NOT NULL, finished TEXT,
    status TEXT NOT NULL, model_path TEXT, model_format TEXT, model_sha256 TEXT, data_path TEXT,
    data_sha256 TEXT, preset TEXT, options_json TEXT, job_json TEXT, versions_json TEXT,
    cpu TEXT, threads INTEGER, error TEXT, run_dir TEXT NOT NULL
);
CREATE INDEX runs_created ON runs (created);
CREATE TABLE variants (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE, name TEXT NOT NULL,
    mode TEXT, io_type TEXT, options_json TEXT, status TEXT NOT NULL, error TEXT,
    size_bytes INTEGER, metrics_json TEXT, top1_agreement_pct REAL, passed INTEGER,
    PRIMARY KEY (run_id, name)
);
PRAGMA user_version = 1;
"""

LOCKED_200MS = (
    "the run database is locked by another process for more than 0.2 s; "
    "retry, or stop the other QuantLens process"
)


def _job(model: str = "/models/mobilenet.keras", data: str = "/data/flowers", **kw: Any) -> dict:
    job = {
        "model_path": model,
        "data_path": data,
        "variants": ["float32", "int8"],
        "preset": "mobilenet_v2",
        "threads": 2,
        "min_agreement_pct": 95.0,
        "trusted": False,
    }
    job.update(kw)
    return job


def _variant(name: str, agreement: float | None, *, status: str = "done", **kw: Any) -> dict:
    v = {
        "name": name,
        "mode": name.split("-")[0],
        "io_type": None,
        "allow_select_tf_ops": False,
        "status": status,
        "error": None,
        "size_bytes": 1000,
        "top1_agreement_pct": agreement,
        "top1_agreement_ci95": [agreement - 1, agreement] if agreement is not None else None,
        "passed": None if agreement is None else agreement >= 95.0,
        "latency_ms": {
            "min": 1.0,
            "p50": 2.0,
            "p90": 3.0,
            "p99": 4.0,
            "mean": 2.1,
            "std": 0.5,
            "n": 50,
        },
    }
    v.update(kw)
    return v


def _new_run(store: RunStore, home: Path, run_id: str, *, name: str = "run", **job: Any) -> Path:
    run_dir = runs_root(home) / run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    store.create_run(run_id, name=name, run_dir=run_dir, job=_job(**job))
    return run_dir


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def store(tmp_path: Path):
    s = open_store(tmp_path)
    yield s
    s.close()


# -- schema ---------------------------------------------------------------------------------


def test_new_database_is_wal_with_latest_schema(tmp_path: Path, store: RunStore) -> None:
    assert store.db_path == tmp_path / DB_NAME
    assert store.recovered_from is None
    con = sqlite3.connect(tmp_path / DB_NAME)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        indexes = {r[1] for r in con.execute("PRAGMA index_list(runs)")}
        assert "runs_created" in indexes
    finally:
        con.close()


def test_open_store_defaults_to_quantlens_home(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("QUANTLENS_HOME", str(tmp_path / "ws"))
    with open_store() as s:
        assert s.db_path == (tmp_path / "ws" / DB_NAME).resolve()
    assert (tmp_path / "ws" / DB_NAME).is_file()


def test_migrates_a_v1_file_and_keeps_its_rows(tmp_path: Path) -> None:
    db = tmp_path / DB_NAME
    con = sqlite3.connect(db)
    con.executescript(V1_SCHEMA)
    con.execute(
        "INSERT INTO runs (id, name, created, status, model_path, data_path, run_dir, job_json)"
        " VALUES ('old1', 'from v1', '2024-01-02T03:04:05+00:00', 'done', '/m.keras', '/d',"
        " '/ws/runs/old1', '{\"variants\": [\"float16\"]}')"
    )
    con.execute(
        "INSERT INTO variants (run_id, name, mode, status, size_bytes, top1_agreement_pct,"
        " passed) VALUES ('old1', 'float16', 'float16', 'done', 4321, 99.5, 1)"
    )
    con.commit()
    con.close()

    with RunStore(db) as s:
        row = s.get_run("old1")
        assert row is not None
        assert (row.name, row.status, row.model_path, row.data_path) == (
            "from v1",
            RunStatus.DONE,
            "/m.keras",
            "/d",
        )
        assert row.trusted is False  # the new column, defaulted
        assert row.modes == ["float16"]
        assert row.best_agreement_pct == 99.5
        assert row.all_passed is True
        [v] = stored_variants(s, "old1")
        assert (v["name"], v["size_bytes"], v["passed"]) == ("float16", 4321, True)
        # The v2 latency table exists and takes writes for the migrated run.
        store_variants(s, "old1", _variant("float16", 99.5, size_bytes=4321))
        assert stored_latency(s, "old1")["float16"]["p99"] == 4.0

    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        cols = {r[1] for r in con.execute("PRAGMA table_info(runs)")}
        assert "trusted" in cols
        assert con.execute("SELECT trusted FROM runs WHERE id = 'old1'").fetchone() == (0,)
    finally:
        con.close()


def test_refuses_a_database_from_a_newer_quantlens(tmp_path: Path) -> None:
    con = sqlite3.connect(tmp_path / DB_NAME)
    con.execute("CREATE TABLE t (x)")
    con.execute("PRAGMA user_version = 99")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match=r"schema v99, newer than this QuantLens reads \(v2\)"):
        open_store(tmp_path)
    assert not list(tmp_path.glob("*.corrupt-*"))  # newer is not corrupt: nothing moved


# -- life cycle ------------------------------------------------------------------------------


def test_run_life_cycle_and_report_sync(tmp_path: Path, store: RunStore) -> None:
    _new_run(store, tmp_path, "r1", name="first", trusted=True)
    row = store.get_run("r1")
    assert row is not None
    assert row.status is RunStatus.QUEUED
    assert row.finished is None
    assert row.trusted is True
    assert row.modes == ["float32", "int8"]
    assert row.best_agreement_pct is None
    assert row.all_passed is None

    store.set_status("r1", RunStatus.RUNNING)
    report = {
        "run": {"id": "r1", "name": "renamed in report", "trusted": True},
        "reference": {
            "path": "/models/mobilenet.keras",
            "format": "keras",
            "sha256": "a" * 64,
            "latency_ms": {"min": 5, "p50": 6, "p90": 7, "p99": 8, "mean": 6.2, "std": 1, "n": 9},
        },
        "dataset": {"path": "/data/flowers", "sha256": "b" * 64},
        "environment": {"tensorflow": "2.21", "cpu": "Test CPU", "threads": 2},
        "variants": [
            _variant("float32", 100.0),
            _variant("int8", 91.25, disagreements=7, passed=False),
        ],
    }
    store.sync_report("r1", report)
    store.set_status("r1", RunStatus.DONE)

    row = store.get_run("r1")
    assert row is not None
    assert row.status is RunStatus.DONE
    assert row.finished is not None
    assert row.name == "first"  # sync_report does not undo a user's name
    assert (row.model_sha256, row.data_sha256, row.cpu, row.model_format) == (
        "a" * 64,
        "b" * 64,
        "Test CPU",
        "keras",
    )
    assert row.best_agreement_pct == 100.0
    assert row.all_passed is False  # int8 failed
    variants = {v["name"]: v for v in stored_variants(store, "r1")}
    assert variants["int8"]["top1_agreement_pct"] == 91.25
    assert variants["int8"]["disagreements"] == 7
    assert variants["int8"]["passed"] is False
    lat = stored_latency(store, "r1")
    assert set(lat) == {"reference", "float32", "int8"}
    assert lat["reference"]["p50"] == 6
    assert lat["int8"]["n"] == 50

    # A later report without int8 drops its variant and latency rows, keeps the reference.
    report["variants"] = [_variant("float32", 100.0)]
    store.sync_report("r1", report)
    assert [v["name"] for v in stored_variants(store, "r1")] == ["float32"]
    assert set(stored_latency(store, "r1")) == {"reference", "float32"}


def test_unknown_run_and_duplicate_id_are_one_line_errors(tmp_path: Path, store: RunStore) -> None:
    with pytest.raises(StoreError, match=r"^no run 'nope' in the run database; refresh"):
        store.set_status("nope", RunStatus.DONE)
    with pytest.raises(StoreError, match=r"^no run 'nope'"):
        store_variants(store, "nope", _variant("int8", 99.0))
    assert store.get_run("nope") is None
    _new_run(store, tmp_path, "dup")
    with pytest.raises(StoreError, match=r"^a run with id 'dup' exists already; pick a new run"):
        _new_run(store, tmp_path, "dup")


def test_names_are_stored_verbatim_and_searchable(tmp_path: Path, store: RunStore) -> None:
    nasty = [
        "'); DROP TABLE runs;--",
        '<script>alert("x")</script>',
        'it\'s "quoted" 100%_done \\ back',
    ]
    for i, name in enumerate(nasty):
        _new_run(store, tmp_path, f"n{i}", name=name)
    _new_run(store, tmp_path, "plain", name="plain run")
    for i, name in enumerate(nasty):
        row = store.get_run(f"n{i}")
        assert row is not None
        assert row.name == name
    assert [r.id for r in store.list_runs(search="DROP TABLE")] == ["n0"]
    assert [r.id for r in store.list_runs(search="<script>")] == ["n1"]
    # % and _ are literal characters in a search, not LIKE wildcards.
    assert [r.id for r in store.list_runs(search="100%_")] == ["n2"]
    assert store.list_runs(search="0%x") == []
    assert len(store.list_runs()) == 4  # the runs table survived
    store.rename_run("plain", "<b>bold</b> '; --")
    row = store.get_run("plain")
    assert row is not None
    assert row.name == "<b>bold</b> '; --"


def test_list_runs_order_search_and_limit(tmp_path: Path, store: RunStore) -> None:
    _new_run(store, tmp_path, "a", name="alpha", model="/m/resnet.keras", data="/d/cats")
    _new_run(store, tmp_path, "b", name="beta", model="/m/mobilenet", data="/d/dogs.csv")
    _new_run(store, tmp_path, "c", name="gamma", variants=["float16"])
    store_variants(store, "c", _variant("int8-uint8", 97.0))
    assert [r.id for r in store.list_runs()] == ["c", "b", "a"]  # newest first
    assert [r.id for r in store.list_runs(limit=2)] == ["c", "b"]
    assert [r.id for r in store.list_runs(search="RESNET")] == ["a"]  # case-insensitive
    assert [r.id for r in store.list_runs(search="dogs")] == ["b"]
    assert [r.id for r in store.list_runs(search="Bet")] == ["b"]
    assert [r.id for r in store.list_runs(search="uint8")] == ["c"]  # a variant's name
    assert [r.id for r in store.list_runs(search="float16")] == ["c"]  # a requested mode
    assert {r.id for r in store.list_runs(search="int8")} == {"a", "b", "c"}
    assert len(store.list_runs(search="  ")) == 3
    row = store.get_run("c")
    assert row is not None
    assert row.modes == ["float16", "int8-uint8"]
    assert row.best_agreement_pct == 97.0


def test_rename_rejects_blank(tmp_path: Path, store: RunStore) -> None:
    _new_run(store, tmp_path, "r", name="keep me")
    with pytest.raises(StoreError, match=r"^a run name cannot be blank; type a name$"):
        store.rename_run("r", "   ")
    row = store.get_run("r")
    assert row is not None
    assert row.name == "keep me"
    with pytest.raises(StoreError, match=r"^no run 'x'"):
        store.rename_run("x", "name")


def test_two_hundred_runs_list_fast(tmp_path: Path, store: RunStore) -> None:
    for i in range(200):
        _new_run(store, tmp_path, f"r{i:03d}", name=f"run {i}")
        store_variants(store, f"r{i:03d}", _variant("int8", 90.0 + i % 10))
    statements: list[str] = []
    assert store._shared is not None
    conn = store._shared.conn
    conn.set_trace_callback(statements.append)
    t0 = time.perf_counter()
    rows = store.list_runs()
    elapsed = time.perf_counter() - t0
    conn.set_trace_callback(None)
    assert len(statements) == 1  # one query for the whole list, no per-run look-ups
    print(f"list_runs over 200 runs: {elapsed * 1000:.1f} ms")  # noqa: T201
    assert len(rows) == 200
    assert rows[0].id == "r199"
    assert rows[-1].id == "r000"
    assert rows[0].best_agreement_pct == 99.0
    assert elapsed < 1.0
    t0 = time.perf_counter()
    found = store.list_runs(search="run 19")
    print(f"search over 200 runs: {(time.perf_counter() - t0) * 1000:.1f} ms")  # noqa: T201
    assert {r.id for r in found} == {"r019", *(f"r{i}" for i in range(190, 200))}


# -- interruption, locks, crashes -------------------------------------------------------------


def test_mark_interrupted_fails_in_flight_runs_only(tmp_path: Path, store: RunStore) -> None:
    _new_run(store, tmp_path, "q")
    _new_run(store, tmp_path, "r")
    _new_run(store, tmp_path, "d")
    _new_run(store, tmp_path, "alive")
    store.set_status("r", RunStatus.RUNNING)
    store.set_status("alive", RunStatus.RUNNING)
    store_variants(store, "r", _variant("int8", None, status="running"), _variant("float32", 100.0))
    store.set_status("d", RunStatus.DONE)
    marked = store.mark_interrupted(still_running=lambda rid, _dir: rid == "alive")
    assert sorted(marked) == ["q", "r"]
    for rid in ("q", "r"):
        row = store.get_run(rid)
        assert row is not None
        assert (row.status, row.error) == (RunStatus.FAILED, "interrupted")
        assert row.finished is not None
    variants = {v["name"]: v for v in stored_variants(store, "r")}
    assert (variants["int8"]["status"], variants["int8"]["error"]) == ("failed", "interrupted")
    assert variants["float32"]["status"] == "done"
    d = store.get_run("d")
    alive = store.get_run("alive")
    assert d is not None
    assert alive is not None
    assert d.status is RunStatus.DONE
    assert alive.status is RunStatus.RUNNING
    assert store.mark_interrupted() == ["alive"]
    assert store.mark_interrupted() == []


_HOLD_LOCK = """
import sqlite3, sys, time
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN IMMEDIATE")
con.execute("UPDATE runs SET name = name")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("COMMIT")
print("released", flush=True)
"""


def _hold_lock(db: Path, seconds: float) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(db), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_write_waits_for_another_process_lock_then_succeeds(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        _new_run(s, tmp_path, "first")
        proc = _hold_lock(s.db_path, 1.0)
        try:
            t0 = time.perf_counter()
            s.rename_run("first", "after the lock")
            waited = time.perf_counter() - t0
        finally:
            out, _ = proc.communicate(timeout=10)
        print(f"write waited {waited:.2f} s for the other process")  # noqa: T201
        assert proc.returncode == 0
        assert out.strip() == "released"
        assert waited > 0.5  # it really waited for the lock
        row = s.get_run("first")
        assert row is not None
        assert row.name == "after the lock"


def test_lock_held_past_busy_timeout_is_a_store_error(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        _new_run(s, tmp_path, "first")
    s = RunStore(tmp_path / DB_NAME, busy_timeout_ms=200)
    proc = _hold_lock(s.db_path, 3.0)
    try:
        t0 = time.perf_counter()
        with pytest.raises(StoreError) as info:
            s.rename_run("first", "never")
        elapsed = time.perf_counter() - t0
        assert str(info.value) == LOCKED_200MS
        assert 0.1 < elapsed < 2.5
        # Reads still work in WAL mode while another process writes.
        row = s.get_run("first")
        assert row is not None
        assert row.name == "run"
    finally:
        proc.communicate(timeout=10)
    s.rename_run("first", "now it works")  # the store is usable once the lock is gone
    row = s.get_run("first")
    assert row is not None
    assert row.name == "now it works"
    s.close()


def test_default_locked_message_says_five_seconds(tmp_path: Path, store: RunStore) -> None:
    assert store._locked_message() == (
        "the run database is locked by another process for more than 5 s; "
        "retry, or stop the other QuantLens process"
    )


_CRASHING_WRITER = """
import sys
from pathlib import Path
from core.history.store import open_store
from core.types import RunStatus

home = Path(sys.argv[1])
s = open_store(home)
for rid in ("done1", "done2"):
    s.create_run(rid, name=rid, run_dir=home / "runs" / rid, job={"variants": ["int8"]})
    s.set_status(rid, RunStatus.RUNNING)
    s.sync_report(rid, {"variants": [{"name": "int8", "mode": "int8", "status": "done",
                                      "top1_agreement_pct": 98.0, "passed": True,
                                      "size_bytes": 10}]})
    s.set_status(rid, RunStatus.DONE)
s.create_run("inflight", name="inflight", run_dir=home / "runs" / "inflight", job={})
s.set_status("inflight", RunStatus.RUNNING)
i = 0
while True:
    s.sync_report("inflight", {"variants": [
        {"name": f"v{k}", "mode": "int8", "status": "running", "size_bytes": i,
         "latency_ms": {"p50": float(i), "n": i}}
        for k in range(min(i + 1, 50))
    ]})
    i += 1
    if i == 20:
        print("mid-run", flush=True)
"""


def test_kill_9_mid_run_keeps_earlier_runs_and_marks_in_flight_failed(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "mid-run"
        time.sleep(0.3)  # let it write many more transactions, then kill it mid-stream
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL

    con = sqlite3.connect(tmp_path / DB_NAME)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        con.close()
    with open_store(tmp_path) as s:
        assert s.recovered_from is None
        for rid in ("done1", "done2"):
            row = s.get_run(rid)
            assert row is not None
            assert row.status is RunStatus.DONE
            assert row.best_agreement_pct == 98.0
            assert [v["name"] for v in stored_variants(s, rid)] == ["int8"]
        inflight = s.get_run("inflight")
        assert inflight is not None
        assert inflight.status is RunStatus.RUNNING  # a ghost until the next start...
        assert len(stored_variants(s, "inflight")) >= 20
        assert s.mark_interrupted() == ["inflight"]  # ...which marks it
        inflight = s.get_run("inflight")
        assert inflight is not None
        assert (inflight.status, inflight.error) == (RunStatus.FAILED, "interrupted")


# -- corruption -------------------------------------------------------------------------------


def test_corrupt_file_is_moved_aside_untouched_and_a_fresh_db_works(tmp_path: Path) -> None:
    garbage = os.urandom(8192)
    wal = os.urandom(1000)
    (tmp_path / DB_NAME).write_bytes(garbage)
    (tmp_path / f"{DB_NAME}-wal").write_bytes(wal)

    with open_store(tmp_path) as s:
        aside = s.recovered_from
        assert aside is not None
        assert aside.parent == tmp_path
        assert aside.name.startswith(f"{DB_NAME}.corrupt-")
        assert aside.read_bytes() == garbage
        assert Path(f"{aside}-wal").read_bytes() == wal
        _new_run(s, tmp_path, "fresh", name="after recovery")
        row = s.get_run("fresh")
        assert row is not None
        assert row.name == "after recovery"

    # A second corruption never overwrites the first copy.
    second = os.urandom(4096)
    (tmp_path / DB_NAME).write_bytes(second)
    for suffix in ("-wal", "-shm"):
        Path(f"{tmp_path / DB_NAME}{suffix}").unlink(missing_ok=True)
    with open_store(tmp_path) as s2:
        assert s2.recovered_from is not None
        assert s2.recovered_from != aside
        assert s2.recovered_from.read_bytes() == second
    assert aside.read_bytes() == garbage
    copies = [p for p in tmp_path.glob(f"{DB_NAME}.corrupt-*") if not p.name.endswith("-wal")]
    assert len([p for p in copies if not p.name.endswith("-shm")]) == 2


def test_damaged_pages_fail_integrity_check_and_are_moved_aside(tmp_path: Path) -> None:
    with open_store(tmp_path) as s:
        for i in range(60):
            _new_run(s, tmp_path, f"r{i:02d}", name="x" * 500)
    con = sqlite3.connect(tmp_path / DB_NAME)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    con.close()
    db = tmp_path / DB_NAME
    data = bytearray(db.read_bytes())
    assert len(data) > 6 * page_size
    # Keep the header page valid; scribble over the b-tree pages after it.
    data[page_size : 5 * page_size] = os.urandom(4 * page_size)
    db.write_bytes(bytes(data))

    with open_store(tmp_path) as s:
        assert s.recovered_from is not None
        assert s.recovered_from.read_bytes() == bytes(data)
        assert s.list_runs() == []  # a fresh, empty, working store
        _new_run(s, tmp_path, "new")
        assert [r.id for r in s.list_runs()] == ["new"]


def test_closed_store_says_so(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.close()
    with pytest.raises(StoreError, match=r"^the run store is closed; open it again"):
        s.list_runs()


# -- one connection per process ---------------------------------------------------------------

_WRITE_ONE_RUN = """
import sys
from pathlib import Path
from core.history.store import open_store

home, run_id = Path(sys.argv[1]), sys.argv[2]
s = open_store(home)
s.create_run(run_id, name=run_id, run_dir=home / "runs" / run_id, job={"variants": ["int8"]})
s.close()
"""


def test_a_long_lived_store_sees_every_write_of_other_stores_and_processes(
    tmp_path: Path,
) -> None:
    """The server's connection, extra stores in the same process, and a CLI that writes and
    closes: the server sees every run, and no process deletes the WAL under it (issue 9.1)."""
    wal = tmp_path / f"{DB_NAME}-wal"
    server = open_store(tmp_path)
    try:
        _new_run(server, tmp_path, "dashboard-0")
        expected = ["dashboard-0"]
        for i in range(3):
            extra = open_store(tmp_path)  # e.g. jobs.create_run or recovery in the server
            extra.close()
            assert server.list_runs(), "closing another handle must not close the shared one"
            run_id = f"cli-{i}"
            subprocess.run(
                [sys.executable, "-c", _WRITE_ONE_RUN, str(tmp_path), run_id],
                check=True,
                env=_env(),
                timeout=60,
            )
            expected.append(run_id)
            # The CLI was not the last connection, so it must not have removed the WAL.
            assert wal.exists()
            assert sorted(r.id for r in server.list_runs()) == sorted(expected)
            _new_run(server, tmp_path, f"dashboard-{i + 1}")
            expected.append(f"dashboard-{i + 1}")
    finally:
        server.close()
    with open_store(tmp_path) as fresh:
        assert sorted(r.id for r in fresh.list_runs()) == sorted(expected)
    assert not list(tmp_path.glob(f"{DB_NAME}.corrupt-*"))


def test_stores_of_one_path_share_one_connection_until_the_last_closes(tmp_path: Path) -> None:
    first = open_store(tmp_path)
    second = open_store(tmp_path)
    assert first._shared is second._shared
    first.close()
    with pytest.raises(StoreError, match=r"^the run store is closed"):
        first.list_runs()
    _new_run(second, tmp_path, "still-open")  # the other user's connection is untouched
    second.close()
    third = open_store(tmp_path)
    try:
        assert [r.id for r in third.list_runs()] == ["still-open"]
    finally:
        third.close()


def test_a_corrupt_file_another_process_has_open_is_never_moved(tmp_path: Path) -> None:
    """If another QuantLens process may be using the file, refuse with one line; move nothing."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from core.history.store import open_store; "
            "s = open_store(Path(sys.argv[1])); print('open', flush=True); time.sleep(30)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "open"
        # Every page into the main file, then damage it under the other process.
        con = sqlite3.connect(tmp_path / DB_NAME)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
        garbage = os.urandom(8192)
        (tmp_path / DB_NAME).write_bytes(garbage)
        with pytest.raises(StoreError) as info:
            open_store(tmp_path)
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"the run database at {tmp_path / DB_NAME} looks damaged")
        assert (tmp_path / DB_NAME).read_bytes() == garbage
        assert not list(tmp_path.glob(f"{DB_NAME}.corrupt-*"))
    finally:
        holder.kill()
        holder.wait(timeout=10)


def test_a_forked_child_opens_its_own_connection_and_leaves_the_parents_alone(
    tmp_path: Path,
) -> None:
    parent = open_store(tmp_path)
    try:
        _new_run(parent, tmp_path, "parent")
        pid = os.fork()
        if pid == 0:  # the child: a fresh registry, its own connection, closed on the way out
            code = 1
            try:
                child = open_store(tmp_path)
                code = 0 if child._shared is not parent._shared else 3
                _new_run(child, tmp_path, "child")
                child.close()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert (tmp_path / f"{DB_NAME}-wal").exists()
        assert sorted(r.id for r in parent.list_runs()) == ["child", "parent"]
    finally:
        parent.close()


def test_remove_run_removes_rows_only(tmp_path: Path, store: RunStore) -> None:
    run_dir = _new_run(store, tmp_path, "r")
    (run_dir / "int8.tflite").write_bytes(b"model")
    store_variants(store, "r", _variant("int8", 99.0))
    store.remove_run("r")
    assert store.get_run("r") is None
    assert stored_variants(store, "r") == []
    assert (run_dir / "int8.tflite").read_bytes() == b"model"  # files are cleanup's job


def test_a_variant_without_a_verdict_does_not_fail_the_run(tmp_path: Path, store: RunStore) -> None:
    """Agreement with a near-chance original means nothing: History says NO VERDICT, not FAIL,
    and that agreement is not the run's best."""
    from ui.history import verdict

    reason = "the original's accuracy is 11.0 %, near chance (10 classes)"
    runs = {
        "nv": [_variant("int8", 99.0, passed=False, verdict_reason=reason)],
        "mixed": [
            _variant("float16", 96.0, passed=True),
            _variant("int8", 99.5, passed=False, verdict_reason=reason),
        ],
        "failed": [
            _variant("float16", 90.0, passed=False),
            _variant("int8", 99.0, passed=False, verdict_reason=reason),
        ],
    }
    for run_id, variants in runs.items():
        _new_run(store, tmp_path, run_id, name=run_id)
        store.sync_report(run_id, {"run": {"id": run_id}, "variants": variants})
        store.set_status(run_id, RunStatus.DONE)
    rows = {r.id: r for r in store.list_runs()}
    assert (rows["nv"].all_passed, rows["nv"].no_verdict, rows["nv"].best_agreement_pct) == (
        None,
        True,
        None,
    )
    assert [verdict(rows[r]) for r in ("nv", "mixed", "failed")] == [
        "NO VERDICT",
        "NO VERDICT",
        "FAIL",
    ]
    assert rows["mixed"].best_agreement_pct == 96.0


def test_queries_and_the_connection_live_in_separate_modules() -> None:
    """store.py holds the queries and rows; opening, recovering and migrating the file is
    core.history.database's, so neither grows into the other."""
    import inspect

    from core.history import database, store

    assert issubclass(RunStore, database.Database)
    assert "sqlite3.connect(" not in inspect.getsource(store)
    assert "CREATE TABLE" not in inspect.getsource(store)
    assert "INSERT" not in inspect.getsource(database)
    # Reads only tests made: the tests read the tables with their own SQL (store_rows).
    assert not any(hasattr(RunStore, n) for n in ("upsert_variant", "variants", "latency"))
