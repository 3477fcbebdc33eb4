"""The run database's connection: one per process and file, checked, recovered, migrated.

What makes the SQLite file durable and shared safely, apart from what is stored in it
(core.history.store): each process keeps one connection to a file (only SQLite ever opens it,
so no plain open()/close() drops SQLite's POSIX locks); a file that two connections in a row
find corrupt is moved aside when no other QuantLens process has it open; the schema is migrated
forward (core.history.schema); every write is one short `BEGIN IMMEDIATE` transaction, and a
lock held past the busy timeout is one line.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from core.errors import StoreError
from core.history.schema import MIGRATIONS, SCHEMA_VERSION

DEFAULT_BUSY_TIMEOUT_MS = 5000

# SQLite's primary result codes (the low byte of sqlite_errorcode).
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
_CONFIRM_PAUSE_S = 0.25  # between the two looks that must both find a file corrupt


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


class Database:
    """One SQLite database file, as this process uses it. Thread-safe within a process; safe
    across processes (WAL).

    Every handle of one database path in a process shares one connection (`close()` releases
    this handle; the connection closes with its last user). A file that two SQLite connections
    in a row find corrupt is moved aside to `<name>.corrupt-<timestamp>` (with its -wal/-shm),
    unless another process has it open; a fresh database is then created and `recovered_from`
    names the moved file so the app can say so. Subclasses write with `_write()` and read with
    `_read()`.
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
