"""The durable run history: an SQLite database (WAL) of runs, variants and latency summaries."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.errors import QuantLensError, StoreError
from core.history.reindex import FoundRun, candidate_folders, read_run_folder, remember_folder
from core.history.rows import (
    LATENCY_KEYS,
    VariantRow,
    latency_values,
    run_columns,
    variant_row,
)
from core.inputs.rundir import workspace_home
from core.reporting.report import variant_of
from core.reporting.runmodel import RunReport, Variant, report_from
from core.types import RunStatus

DB_NAME = "quantlens.db"
DEFAULT_BUSY_TIMEOUT_MS = 5000

# SQLite result codes (primary code = extended code & 0xFF) that we map to specific behaviour.
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_CONFIRM_PAUSE_S = 0.25  # between the two looks that must both find a file corrupt

# Forward migrations: MIGRATIONS[i] takes a database from user_version i to i + 1. Each step runs
# in one transaction together with the user_version bump, so a crash mid-migration leaves the old
# version intact. Never edit a released step; append a new one.
MIGRATIONS: list[tuple[str, ...]] = [
    # 0 -> 1: the first schema (no trust flag, no latency table).
    (
        """
        CREATE TABLE runs (
            id            TEXT PRIMARY KEY,
            name          TEXT NOT NULL DEFAULT '',
            created       TEXT NOT NULL,
            finished      TEXT,
            status        TEXT NOT NULL,
            model_path    TEXT,
            model_format  TEXT,
            model_sha256  TEXT,
            data_path     TEXT,
            data_sha256   TEXT,
            preset        TEXT,
            options_json  TEXT,
            job_json      TEXT,
            versions_json TEXT,
            cpu           TEXT,
            threads       INTEGER,
            error         TEXT,
            run_dir       TEXT NOT NULL
        )
        """,
        "CREATE INDEX runs_created ON runs (created)",
        """
        CREATE TABLE variants (
            run_id             TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            name               TEXT NOT NULL,
            mode               TEXT,
            io_type            TEXT,
            options_json       TEXT,
            status             TEXT NOT NULL,
            error              TEXT,
            size_bytes         INTEGER,
            metrics_json       TEXT,
            top1_agreement_pct REAL,
            passed             INTEGER,
            PRIMARY KEY (run_id, name)
        )
        """,
    ),
    # 1 -> 2: trusted-mode flag on runs (RELIABILITY 1) and per-model latency summaries.
    (
        "ALTER TABLE runs ADD COLUMN trusted INTEGER NOT NULL DEFAULT 0",
        """
        CREATE TABLE latency (
            run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            model  TEXT NOT NULL,
            "min"  REAL,
            p50    REAL,
            p90    REAL,
            p99    REAL,
            mean   REAL,
            std    REAL,
            n      INTEGER,
            PRIMARY KEY (run_id, model)
        )
        """,
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)

_JOB_OPTION_KEYS = (
    "calibration_samples",
    "max_samples",
    "threads",
    "min_agreement_pct",
    "seed",
    "latency_runs",
    "warmup_runs",
    "labels_file",
)
# A unit separator cannot appear in a variant name, so it safely joins them in group_concat.
_SEP = "\x1f"

_JUDGED = "json_extract(metrics_json, '$.verdict_reason') IS NULL"
_SELECT_RUNS = f"""
    SELECT r.id, r.name, r.created, r.finished, r.status, r.model_path, r.model_format,
           r.data_path, r.preset, r.job_json, r.trusted, r.error, r.run_dir,
           r.model_sha256, r.data_sha256, r.cpu, r.threads,
           v.names, v.best, v.passed_min, v.n_passed, v.n_no_verdict
    FROM runs AS r
    LEFT JOIN (
        SELECT run_id,
               group_concat(name, '{_SEP}') AS names,
               -- passed is NULL on a float32 pivot the run added on its own, and a variant
               -- with no verdict agrees with a near-chance original: neither is the best.
               max(CASE WHEN status = 'done' AND passed IS NOT NULL AND {_JUDGED}
                        THEN top1_agreement_pct END) AS best,
               -- A variant with no verdict (its original is near chance) is stored with
               -- passed = 0, as it never passes; but the run did not FAIL on it.
               min(CASE WHEN {_JUDGED} THEN passed END) AS passed_min,
               count(CASE WHEN {_JUDGED} THEN passed END) AS n_passed,
               count(CASE WHEN NOT ({_JUDGED}) THEN 1 END) AS n_no_verdict
        FROM variants GROUP BY run_id
    ) AS v ON v.run_id = r.id
"""


@dataclass(frozen=True)
class RunRow:
    """One run as the history page lists it."""

    id: str
    name: str
    created: str  # ISO 8601, UTC
    finished: str | None
    status: RunStatus
    model_path: str
    data_path: str
    modes: list[str]  # variant names: requested by the job, then any others that have a row
    best_agreement_pct: float | None  # best top-1 agreement over finished, judged variants
    all_passed: bool | None  # every judged variant passed; None when none was judged
    run_dir: Path
    error: str | None = None
    preset: str | None = None
    model_format: str | None = None
    model_sha256: str | None = None
    data_sha256: str | None = None
    cpu: str | None = None
    threads: int | None = None
    trusted: bool = False
    no_verdict: bool = False  # some finished variant has no verdict (original near chance)


def open_store(
    home: Path | None = None, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
) -> RunStore:
    """Open (creating or migrating if needed) the run database `<home>/quantlens.db`.

    Every store of one database in a process shares the process's one connection; close the
    returned handle when done (the connection closes with its last handle).

    Args:
        home: the workspace folder; defaults to `core.inputs.rundir.workspace_home()`.
        busy_timeout_ms: how long a write waits for another process's lock.

    Raises:
        StoreError: the database cannot be opened, is locked, or is from a newer QuantLens.
    """
    root = home if home is not None else workspace_home()
    return RunStore(root / DB_NAME, busy_timeout_ms=busy_timeout_ms)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _dumps(obj: Any) -> str | None:
    return None if obj is None else json.dumps(obj, sort_keys=True, default=str)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _is_busy(exc: sqlite3.Error) -> bool:
    if _code(exc) in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return True
    return "locked" in str(exc) or "busy" in str(exc)


def _is_corrupt(exc: sqlite3.Error) -> bool:
    if _code(exc) in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return True
    text = str(exc)
    return "not a database" in text or "malformed" in text


def _like(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, with its own % and _ taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class _Corrupt(Exception):
    """Internal: the file on disk is not a healthy SQLite database."""


@dataclass
class _Shared:
    """This process's one connection to one database file, shared by every RunStore of it.

    One connection per process matters on POSIX: fcntl locks belong to the process, so a second
    connection (or any open()/close() of the file) can drop the first one's locks, and another
    process then deletes the -wal under it.
    """

    conn: sqlite3.Connection
    lock: threading.RLock
    marker_fd: int  # holds a shared flock on `<db>.lock` while this process uses the database
    busy_timeout_ms: int
    recovered_from: Path | None
    users: int = 0
    reindexed: int | None = None  # runs re-added from their folders after recovery


_REGISTRY: dict[Path, _Shared] = {}
_REGISTRY_LOCK = threading.Lock()
_INHERITED: list[_Shared] = []  # a forked child's copies: kept, never used, never closed


def _forget_after_fork() -> None:
    """A forked child starts fresh: closing the parent's connections would checkpoint under it."""
    global _REGISTRY_LOCK
    _INHERITED.extend(_REGISTRY.values())
    _REGISTRY.clear()
    _REGISTRY_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def _marker_path(db_path: Path) -> Path:
    # A separate file: flock on it never touches SQLite's own fcntl locks on the database.
    return db_path.with_name(f"{db_path.name}.lock")


class RunStore:
    """SQLite-backed run history. Thread-safe within a process; safe across processes (WAL).

    Every RunStore of one database path in a process shares one connection (`close()` releases
    this handle; the connection closes with its last user). Every write is one short
    `BEGIN IMMEDIATE` transaction. A file that two SQLite connections in a row find corrupt is
    moved aside to `quantlens.db.corrupt-<timestamp>` (with its -wal/-shm), unless another
    process has it open; a fresh database is then created and `recovered_from` names the
    moved file so the app can say so.
    """

    def __init__(
        self,
        db_path: Path,
        *,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        check_integrity: bool = True,
    ) -> None:
        """Open the database at `db_path`, recovering from corruption and migrating the schema.

        Args:
            db_path: the SQLite file; its folder is created if missing.
            busy_timeout_ms: how long a statement waits for another connection's lock.
            check_integrity: run `PRAGMA integrity_check` on open (cheap: the store is small).

        Raises:
            StoreError: the file cannot be opened, stays locked, has a newer schema, or is
                damaged while another process has it open.
        """
        self.db_path = Path(db_path)
        self.busy_timeout_ms = int(busy_timeout_ms)
        try:
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the workspace folder {self.db_path.parent}: {exc.strerror}; "
                "set QUANTLENS_HOME to a writable folder"
            ) from None
        key = self.db_path.resolve()
        with _REGISTRY_LOCK:
            shared = _REGISTRY.get(key)
            if shared is None:
                shared = self._open_shared(check_integrity=check_integrity)
                _REGISTRY[key] = shared
            shared.users += 1
        self._key = key
        self._shared: _Shared | None = shared
        self.recovered_from: Path | None = shared.recovered_from
        if shared.recovered_from is not None:
            self._rebuild_after_recovery(shared)

    def _rebuild_after_recovery(self, shared: _Shared) -> None:
        """A fresh database replaced a corrupt one: re-add every run its folder still records.

        Once per process and database; a failure leaves the index as it is (the History page
        says the database was moved aside, and `history --reindex` can try again).
        """
        with shared.lock:
            if shared.reindexed is not None:
                return
            assert shared.recovered_from is not None
            try:
                shared.reindexed = self.reindex(databases=[shared.recovered_from])[1]
            except (QuantLensError, OSError):
                shared.reindexed = 0

    @property
    def reindexed(self) -> int | None:
        """How many runs were re-added from their folders after a corrupt database was moved
        aside (None when nothing was recovered)."""
        return None if self._shared is None else self._shared.reindexed

    # -- opening ---------------------------------------------------------------------------

    @property
    def home(self) -> Path:
        """The workspace folder that holds the database and `runs/`."""
        return self.db_path.parent

    def _locked_message(self) -> str:
        seconds = f"{self.busy_timeout_ms / 1000:g}"
        return (
            f"the run database is locked by another process for more than {seconds} s; "
            "retry, or stop the other QuantLens process"
        )

    def _open_shared(self, *, check_integrity: bool) -> _Shared:
        """This process's first connection to the file: checked, recovered, migrated."""
        marker_fd = self._hold_marker()
        try:
            recovered_from = None
            try:
                conn = self._connect(check_integrity=check_integrity)
            except _Corrupt:
                recovered_from = self._move_aside(marker_fd)
                try:
                    conn = self._connect(check_integrity=False)
                except _Corrupt:
                    raise StoreError(
                        f"a fresh run database at {self.db_path} is unusable; "
                        "check the disk and set QUANTLENS_HOME to another folder"
                    ) from None
        except BaseException:
            os.close(marker_fd)
            raise
        return _Shared(
            conn=conn,
            lock=threading.RLock(),
            marker_fd=marker_fd,
            busy_timeout_ms=self.busy_timeout_ms,
            recovered_from=recovered_from,
        )

    def _hold_marker(self) -> int:
        """Open `<db>.lock` with a shared flock: proof to other processes that this one uses it."""
        path = _marker_path(self.db_path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise StoreError(
                f"cannot open {path}: {exc.strerror}; "
                "check the folder's permissions or set QUANTLENS_HOME to another folder"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except OSError:
            os.close(fd)
            raise
        return fd

    def _probe(self, *, check_integrity: bool) -> None:
        """Raise _Corrupt if two read-only connections in a row find the file unhealthy.

        Only SQLite ever opens the file: a plain open()/close() would drop this process's
        fcntl locks on it. Read-only, because a read-write connection "repairs" on close: it
        checkpoints and deletes a -wal it cannot make sense of, which would destroy part of
        what we promise to keep aside. A second look after a pause rules out a transient
        state (another process mid-checkpoint) being taken for corruption.
        """
        if not self.db_path.exists():
            return
        try:
            self._probe_once(check_integrity=check_integrity)
        except _Corrupt:
            time.sleep(_CONFIRM_PAUSE_S)
            self._probe_once(check_integrity=check_integrity)

    def _probe_once(self, *, check_integrity: bool) -> None:
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(
                self.db_path.resolve().as_uri() + "?mode=ro",
                uri=True,
                timeout=self.busy_timeout_ms / 1000,
            )
            conn.execute("PRAGMA user_version").fetchone()
            if check_integrity:
                rows = conn.execute("PRAGMA integrity_check").fetchall()
                if [r[0] for r in rows] != ["ok"]:
                    raise _Corrupt()
        except sqlite3.Error as exc:
            raise self._open_error(exc) from (exc if _is_corrupt(exc) else None)
        finally:
            if conn is not None:
                conn.close()

    def _open_error(self, exc: sqlite3.Error) -> Exception:
        """What opening the database failed with: corrupt (moved aside later), locked, or other."""
        if _is_corrupt(exc):
            return _Corrupt()
        if _is_busy(exc):
            return StoreError(self._locked_message())
        return StoreError(
            f"cannot open the run database at {self.db_path}: {exc}; "
            "check the file's permissions or set QUANTLENS_HOME to another folder"
        )

    def _connect(self, *, check_integrity: bool) -> sqlite3.Connection:
        self._probe(check_integrity=check_integrity)
        conn: sqlite3.Connection | None = None
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly
            # as long as we say and DDL in migrations is transactional too.
            conn = sqlite3.connect(
                self.db_path,
                timeout=self.busy_timeout_ms / 1000,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(
                    f"the run database at {self.db_path} cannot use WAL mode ({mode}); "
                    "put QUANTLENS_HOME on a local disk"
                )
            # FULL: a committed run survives a power cut too; writes are few and small.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._migrate(conn)
            return conn
        except _Corrupt:
            if conn is not None:
                conn.close()
            raise
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise self._open_error(exc) from (exc if _is_corrupt(exc) else None)
        except BaseException:
            if conn is not None:
                conn.close()
            raise

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the run database at {self.db_path} has schema v{version}, newer than this "
                f"QuantLens reads (v{SCHEMA_VERSION}); upgrade QuantLens or use another "
                "QUANTLENS_HOME"
            )
        while version < SCHEMA_VERSION:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Re-read under the write lock: another process may have migrated meanwhile.
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version < SCHEMA_VERSION:
                    for statement in MIGRATIONS[version]:
                        conn.execute(statement)
                    version += 1
                    conn.execute(f"PRAGMA user_version = {version}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _move_aside(self, marker_fd: int) -> Path:
        """Rename the corrupt file (and its -wal/-shm) to a unique, never-overwritten name.

        Only when no other process uses the database: moving a file from under a live
        connection loses what that connection writes next. In doubt, refuse.
        """
        try:
            fcntl.flock(marker_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StoreError(
                f"the run database at {self.db_path} looks damaged, but another QuantLens "
                "process has it open; stop the other QuantLens processes and start again"
            ) from None
        try:
            return self._rename_aside()
        finally:
            fcntl.flock(marker_fd, fcntl.LOCK_SH)

    def _rename_aside(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        aside = self.db_path.with_name(f"{self.db_path.name}.corrupt-{stamp}")
        counter = 1
        while any(Path(f"{aside}{suffix}").exists() for suffix in ("", "-wal", "-shm")):
            counter += 1
            aside = self.db_path.with_name(f"{self.db_path.name}.corrupt-{stamp}-{counter}")
        try:
            # The -wal and -shm names follow the main file so SQLite can still open the copy.
            for suffix in ("-wal", "-shm", ""):
                src = Path(f"{self.db_path}{suffix}")
                if src.exists():
                    os.rename(src, f"{aside}{suffix}")
        except OSError as exc:
            raise StoreError(
                f"the run database at {self.db_path} is corrupt and cannot be moved aside "
                f"({exc.strerror}); move it away by hand and restart"
            ) from None
        return aside

    # -- transactions ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction; a lock held past the busy timeout becomes StoreError."""
        with self._locked_connection() as conn:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if _is_busy(exc):
                    raise StoreError(self._locked_message()) from None
                raise self._error(exc) from None
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._error(exc) from None
                raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._locked_connection() as conn:
            try:
                yield conn
            except sqlite3.Error as exc:
                raise self._error(exc) from None

    @contextlib.contextmanager
    def _locked_connection(self) -> Iterator[sqlite3.Connection]:
        """The shared connection, held by this thread, with this handle's busy timeout."""
        shared = self._shared
        if shared is None:
            raise StoreError("the run store is closed; open it again with open_store()")
        with shared.lock:
            if shared.busy_timeout_ms != self.busy_timeout_ms:
                shared.conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
                shared.busy_timeout_ms = self.busy_timeout_ms
            yield shared.conn

    def _error(self, exc: sqlite3.Error) -> StoreError:
        if _is_busy(exc):
            return StoreError(self._locked_message())
        if _is_corrupt(exc):
            return StoreError(
                f"the run database at {self.db_path} is damaged ({exc}); "
                "restart QuantLens to move it aside and start a fresh one"
            )
        return StoreError(f"the run database failed: {exc}; retry, or restart QuantLens")

    # -- writes ----------------------------------------------------------------------------

    def create_run(self, run_id: str, *, name: str, run_dir: Path, job: dict[str, Any]) -> None:
        """Insert a `queued` run before any work starts (RELIABILITY 8).

        Args:
            run_id: the run's unique id (also its folder name under `runs/`).
            name: the user's label for the run, stored verbatim.
            run_dir: the folder holding the run's files.
            job: the job spec dict (`JobSpec.to_dict()`).

        Raises:
            StoreError: the id exists already, or the database is locked.
        """
        options = {k: job[k] for k in _JOB_OPTION_KEYS if k in job}
        try:
            with self._write() as conn:
                conn.execute(
                    """
                    INSERT INTO runs (id, name, created, status, model_path, data_path, preset,
                                      options_json, job_json, threads, trusted, run_dir)
                    VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                    """,
                    (
                        run_id,
                        name,
                        _now(),
                        str(RunStatus.QUEUED),
                        job.get("model_path"),
                        job.get("data_path"),
                        None if job.get("preset") is None else str(job["preset"]),
                        _dumps(options),
                        _dumps(job),
                        job.get("threads"),
                        int(bool(job.get("trusted", False))),
                        str(run_dir),
                    ),
                )
        except StoreError as exc:
            if "UNIQUE" in str(exc):
                raise StoreError(
                    f"a run with id {run_id!r} exists already; pick a new run id"
                ) from None
            raise
        # A --out folder outside runs/ is noted, so a rebuilt index finds it again.
        with contextlib.suppress(OSError):
            remember_folder(self.home, run_dir)

    def reindex(self, *, databases: Sequence[Path] = ()) -> tuple[int, int]:
        """Add every run that a run folder records and the index lacks.

        The folders are the workspace's `runs/`, the `--out` folders noted when their run was
        created, and those `databases` (damaged ones, read-only) name. A run the index holds
        already is left as it is.

        Returns:
            (runs found in folders, runs added to the index).
        """
        found = [
            run
            for folder in candidate_folders(self.home, databases)
            if (run := read_run_folder(folder)) is not None
        ]
        added = 0
        for run in found:
            if self.get_run(run.run_id) is None and self._restore(run):
                added += 1
        return len(found), added

    def _restore(self, run: FoundRun) -> bool:
        """Insert a run found in its folder, with its variants from its report."""
        job = run.job
        options = {k: job[k] for k in _JOB_OPTION_KEYS if k in job}
        with self._write() as conn:
            cur = conn.execute(
                """
                INSERT OR IGNORE INTO runs (id, name, created, finished, status, error,
                                            model_path, data_path, preset, options_json,
                                            job_json, threads, trusted, run_dir)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                (
                    run.run_id,
                    run.name,
                    run.created,
                    run.finished if run.status.finished else None,
                    str(run.status),
                    run.error,
                    job.get("model_path"),
                    job.get("data_path"),
                    None if job.get("preset") is None else str(job["preset"]),
                    _dumps(options),
                    _dumps(job),
                    job.get("threads"),
                    int(bool(job.get("trusted", False))),
                    str(run.run_dir),
                ),
            )
            if cur.rowcount == 0:
                return False  # another process added it meanwhile
        if run.report is not None:
            self.sync_report(run.run_id, run.report)
        return True

    def set_status(self, run_id: str, status: RunStatus, *, error: str | None = None) -> None:
        """Move a run to `status`; a finished status also stamps `finished`.

        Raises:
            StoreError: no such run, or the database is locked.
        """
        status = RunStatus(status)
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = ?, error = ?, finished = ? WHERE id = ?",
                (str(status), error, _now() if status.finished else None, run_id),
            )
            self._require(cur, run_id)

    def upsert_variant(self, run_id: str, variant: Variant | Mapping[str, Any]) -> None:
        """Insert or replace one variant and its latency summary.

        Raises:
            StoreError: no such run, or the database is locked.
            QuantLensError: a variant dict without a mode (not a report.json entry).
        """
        row = variant_row(variant_of(variant))
        with self._write() as conn:
            self._require_run(conn, run_id)
            self._upsert_variant(conn, run_id, row)

    def sync_report(self, run_id: str, report: RunReport | Mapping[str, Any]) -> None:
        """Store identity, variants and latency summaries of a run's report atomically.

        The run's name and status are left alone: the user may have renamed the run, and the
        status is the worker's to set. Variants missing from the report are removed.

        Raises:
            StoreError: no such run, or the database is locked.
        """
        typed = report_from(report)
        run = run_columns(typed)
        variants = [variant_row(v) for v in typed.variants]
        with self._write() as conn:
            self._require_run(conn, run_id)
            conn.execute(
                """
                UPDATE runs SET
                    model_path = coalesce(?, model_path),
                    model_format = coalesce(?, model_format),
                    model_sha256 = coalesce(?, model_sha256),
                    data_path = coalesce(?, data_path),
                    data_sha256 = coalesce(?, data_sha256),
                    preset = coalesce(?, preset),
                    options_json = coalesce(?, options_json),
                    versions_json = coalesce(?, versions_json),
                    cpu = coalesce(?, cpu),
                    threads = coalesce(?, threads),
                    trusted = coalesce(?, trusted)
                WHERE id = ?
                """,
                (
                    run.model_path,
                    run.model_format,
                    run.model_sha256,
                    run.data_path,
                    run.data_sha256,
                    run.preset,
                    _dumps(run.options),
                    _dumps(run.versions),
                    run.cpu,
                    run.threads,
                    run.trusted,
                    run_id,
                ),
            )
            names = [v.name for v in variants]
            placeholders = ",".join("?" * len(names))
            conn.execute(
                f"DELETE FROM variants WHERE run_id = ? AND name NOT IN ({placeholders})",
                (run_id, *names),
            )
            # The reference's latency row always stays; a dropped variant's row goes.
            conn.execute(
                f"DELETE FROM latency WHERE run_id = ? AND model NOT IN (?{',?' * len(names)})",
                (run_id, "reference", *names),
            )
            for variant in variants:
                self._upsert_variant(conn, run_id, variant)
            self._upsert_latency(conn, run_id, "reference", typed.reference.get("latency_ms"))

    def rename_run(self, run_id: str, name: str) -> None:
        """Give a run a new name, stored verbatim.

        Raises:
            StoreError: the name is blank, no such run, or the database is locked.
        """
        if not name.strip():
            raise StoreError("a run name cannot be blank; type a name")
        with self._write() as conn:
            cur = conn.execute("UPDATE runs SET name = ? WHERE id = ?", (name, run_id))
            self._require(cur, run_id)

    def remove_run(self, run_id: str) -> None:
        """Remove a run's rows (its variants and latency go with it); files are not touched.

        Deleting a run, folder included, is `core.history.cleanup.delete_run`.

        Raises:
            StoreError: the database is locked or cannot be written.
        """
        with self._write() as conn:
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    def mark_interrupted(
        self, *, still_running: Callable[[str, Path], bool] | None = None
    ) -> list[str]:
        """Turn every queued/running run into `failed` with error "interrupted".

        Call at server start and CLI start: a run in flight when the process died must not
        stay a ghost (RELIABILITY 8). Its unfinished variants become `failed` as well.

        Args:
            still_running: optional `(run_id, run_dir) -> bool`; a run for which it returns
                True (e.g. its worker pid is alive) is left alone.

        Returns:
            The ids of the runs that were marked.
        """
        with self._write() as conn:
            rows = conn.execute(
                "SELECT id, run_dir FROM runs WHERE status IN (?, ?)",
                (str(RunStatus.QUEUED), str(RunStatus.RUNNING)),
            ).fetchall()
            ids = [
                rid
                for rid, run_dir in rows
                if still_running is None or not still_running(rid, Path(run_dir))
            ]
            now = _now()
            for rid in ids:
                conn.execute(
                    "UPDATE runs SET status = ?, error = 'interrupted', finished = ? WHERE id = ?",
                    (str(RunStatus.FAILED), now, rid),
                )
                conn.execute(
                    """
                    UPDATE variants SET status = 'failed', error = coalesce(error, 'interrupted')
                    WHERE run_id = ? AND status IN ('pending', 'running', 'queued')
                    """,
                    (rid,),
                )
        return ids

    # -- reads -----------------------------------------------------------------------------

    def list_runs(self, *, search: str | None = None, limit: int = 500) -> list[RunRow]:
        """Runs newest first, optionally filtered, in one query.

        Args:
            search: case-insensitive substring of the name, model path, data path or a
                variant/mode name; blank means no filter.
            limit: at most this many rows.
        """
        sql = _SELECT_RUNS
        params: list[Any] = []
        if search and search.strip():
            pattern = _like(search.strip())
            sql += """
                WHERE r.name LIKE ? ESCAPE '\\'
                   OR r.model_path LIKE ? ESCAPE '\\'
                   OR r.data_path LIKE ? ESCAPE '\\'
                   OR EXISTS (SELECT 1 FROM variants AS x
                              WHERE x.run_id = r.id
                                AND (x.name LIKE ? ESCAPE '\\' OR x.mode LIKE ? ESCAPE '\\'))
                   OR EXISTS (SELECT 1 FROM json_each(r.job_json, '$.variants') AS j
                              WHERE j.value LIKE ? ESCAPE '\\')
            """
            params += [pattern] * 6
        sql += " ORDER BY r.created DESC, r.rowid DESC LIMIT ?"
        params.append(int(limit))
        with self._read() as conn:
            rows = conn.execute(sql, params).fetchall()
        return [self._row(r) for r in rows]

    def unfinished_runs(self) -> list[RunRow]:
        """Queued and running runs, oldest first (the order they take turns in)."""
        with self._read() as conn:
            rows = conn.execute(
                _SELECT_RUNS + " WHERE r.status IN (?, ?) ORDER BY r.created, r.rowid",
                (str(RunStatus.QUEUED), str(RunStatus.RUNNING)),
            ).fetchall()
        return [self._row(r) for r in rows]

    def get_run(self, run_id: str) -> RunRow | None:
        """One run, or None when the id is unknown."""
        with self._read() as conn:
            row = conn.execute(_SELECT_RUNS + " WHERE r.id = ?", (run_id,)).fetchone()
        return None if row is None else self._row(row)

    def variants(self, run_id: str) -> list[dict[str, Any]]:
        """The run's variants as report.json variant dicts, in the order they were first written.

        Columns the store keeps (status, error, size, agreement, passed) override the stored
        dict, so a status set later (e.g. "interrupted") shows.
        """
        with self._read() as conn:
            rows = conn.execute(
                """
                SELECT name, mode, io_type, options_json, status, error, size_bytes,
                       metrics_json, top1_agreement_pct, passed
                FROM variants WHERE run_id = ? ORDER BY rowid
                """,
                (run_id,),
            ).fetchall()
        out = []
        for (
            name,
            mode,
            io_type,
            options,
            status,
            error,
            size,
            metrics,
            agree,
            passed,
        ) in rows:
            d: dict[str, Any] = dict(_loads(metrics) or {})
            d.update(_loads(options) or {})
            d.update(
                name=name,
                mode=mode,
                io_type=io_type,
                status=status,
                error=error,
                size_bytes=size,
                top1_agreement_pct=agree,
                passed=None if passed is None else bool(passed),
            )
            out.append(d)
        return out

    def latency(self, run_id: str) -> dict[str, dict[str, float | int | None]]:
        """Latency summaries of a run keyed by model ("reference" or a variant name)."""
        with self._read() as conn:
            rows = conn.execute(
                'SELECT model, "min", p50, p90, p99, mean, std, n FROM latency WHERE run_id = ?',
                (run_id,),
            ).fetchall()
        return {r[0]: dict(zip(LATENCY_KEYS, r[1:], strict=True)) for r in rows}

    def close(self) -> None:
        """Release this handle (later calls on it raise StoreError).

        The process's connection stays open while another handle of the same file uses it,
        and closes with the last one.
        """
        with _REGISTRY_LOCK:
            shared, self._shared = self._shared, None
            if shared is None:
                return
            shared.users -= 1
            if shared.users > 0:
                return
            if _REGISTRY.get(self._key) is shared:
                del _REGISTRY[self._key]
        with shared.lock:
            shared.conn.close()
        os.close(shared.marker_fd)

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _require(cur: sqlite3.Cursor, run_id: str) -> None:
        if cur.rowcount == 0:
            raise StoreError(f"no run {run_id!r} in the run database; refresh the run list")

    @staticmethod
    def _require_run(conn: sqlite3.Connection, run_id: str) -> None:
        if conn.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
            raise StoreError(f"no run {run_id!r} in the run database; refresh the run list")

    def _upsert_variant(self, conn: sqlite3.Connection, run_id: str, row: VariantRow) -> None:
        conn.execute(
            """
            INSERT INTO variants (run_id, name, mode, io_type, options_json, status, error,
                                  size_bytes, metrics_json, top1_agreement_pct, passed)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            ON CONFLICT (run_id, name) DO UPDATE SET
                mode = excluded.mode, io_type = excluded.io_type,
                options_json = excluded.options_json, status = excluded.status,
                error = excluded.error, size_bytes = excluded.size_bytes,
                metrics_json = excluded.metrics_json,
                top1_agreement_pct = excluded.top1_agreement_pct, passed = excluded.passed
            """,
            (
                run_id,
                row.name,
                row.mode,
                row.io_type,
                _dumps(row.options),
                row.status,
                row.error,
                row.size_bytes,
                _dumps(row.metrics),
                row.top1_agreement_pct,
                row.passed,
            ),
        )
        self._upsert_latency(conn, run_id, row.name, row.latency)

    @staticmethod
    def _upsert_latency(
        conn: sqlite3.Connection, run_id: str, model: str, stats: Mapping[str, Any] | None
    ) -> None:
        if not stats:
            return
        conn.execute(
            """
            INSERT OR REPLACE INTO latency (run_id, model, "min", p50, p90, p99, mean, std, n)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            (run_id, model, *latency_values(stats)),
        )

    @staticmethod
    def _row(r: tuple[Any, ...]) -> RunRow:
        (
            rid,
            name,
            created,
            finished,
            status,
            model_path,
            model_format,
            data_path,
            preset,
            job_json,
            trusted,
            error,
            run_dir,
            model_sha,
            data_sha,
            cpu,
            threads,
            names,
            best,
            passed_min,
            n_passed,
            n_no_verdict,
        ) = r
        # Requested variants first, in the job's order; then any others the worker wrote.
        modes: list[str] = []
        try:
            job = _loads(job_json) or {}
        except ValueError:
            job = {}
        for m in list(job.get("variants") or []) + (names.split(_SEP) if names else []):
            if m not in modes:
                modes.append(str(m))
        return RunRow(
            id=rid,
            name=name,
            created=created,
            finished=finished,
            status=RunStatus(status),
            model_path=model_path or "",
            data_path=data_path or "",
            modes=modes,
            best_agreement_pct=best,
            all_passed=None if not n_passed else bool(passed_min),
            no_verdict=bool(n_no_verdict),
            run_dir=Path(run_dir),
            error=error,
            preset=preset,
            model_format=model_format,
            model_sha256=model_sha,
            data_sha256=data_sha,
            cpu=cpu,
            threads=threads,
            trusted=bool(trusted),
        )
