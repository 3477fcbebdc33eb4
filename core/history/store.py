"""The run history's queries: runs, their variants and latency summaries, and the row a run
lists as.

`RunStore` is the SQLite index over the run folders: a run's row exists before work starts,
each report is synced into it, and a lost or damaged index is rebuilt from the folders
(core.history.reindex). The connection it runs on, and the recovery from a corrupt file, are
core.history.database's; the tables are core.history.schema's.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.errors import QuantLensError, StoreError
from core.history.database import DEFAULT_BUSY_TIMEOUT_MS, Database
from core.history.reindex import FoundRun, candidate_folders, read_run_folder, remember_folder
from core.history.rows import VariantRow, latency_values, run_columns, variant_row
from core.inputs.rundir import workspace_home
from core.reporting.runmodel import RunReport, report_from
from core.types import RunStatus

DB_NAME = "quantlens.db"

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


def _like(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, with its own % and _ taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class RunStore(Database):
    """The run history in SQLite: each write one short transaction, each list one query.

    Opened like its `Database` (one shared connection per process and file); after a corrupt
    file was moved aside, the fresh database is filled again from the run folders.
    """

    def __init__(
        self,
        db_path: Path,
        *,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        check_integrity: bool = True,
    ) -> None:
        """Open the run database at `db_path` (see `Database`); rebuild it after a recovery.

        Raises:
            StoreError: the file cannot be opened, stays locked, has a newer schema, or is
                damaged while another process has it open.
        """
        super().__init__(db_path, busy_timeout_ms=busy_timeout_ms, check_integrity=check_integrity)
        if self.recovered_from is not None:
            self._rebuild_after_recovery()

    def _rebuild_after_recovery(self) -> None:
        """A fresh database replaced a corrupt one: re-add every run its folder still records.

        Once per process and database; a failure leaves the index as it is (the History page
        says the database was moved aside, and `history --reindex` can try again).
        """
        shared = self._shared
        assert shared is not None and shared.recovered_from is not None
        with shared.lock:
            if shared.reindexed is not None:
                return
            try:
                shared.reindexed = self.reindex(databases=[shared.recovered_from])[1]
            except (QuantLensError, OSError):
                shared.reindexed = 0

    @property
    def reindexed(self) -> int | None:
        """How many runs were re-added from their folders after a corrupt database was moved
        aside (None when nothing was recovered)."""
        return None if self._shared is None else self._shared.reindexed

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
        return [_run_row(r) for r in rows]

    def unfinished_runs(self) -> list[RunRow]:
        """Queued and running runs, oldest first (the order they take turns in)."""
        with self._read() as conn:
            rows = conn.execute(
                _SELECT_RUNS + " WHERE r.status IN (?, ?) ORDER BY r.created, r.rowid",
                (str(RunStatus.QUEUED), str(RunStatus.RUNNING)),
            ).fetchall()
        return [_run_row(r) for r in rows]

    def get_run(self, run_id: str) -> RunRow | None:
        """One run, or None when the id is unknown."""
        with self._read() as conn:
            row = conn.execute(_SELECT_RUNS + " WHERE r.id = ?", (run_id,)).fetchone()
        return None if row is None else _run_row(row)

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


def _run_row(r: tuple[Any, ...]) -> RunRow:
    """A row of `_SELECT_RUNS` as the RunRow the history page lists."""
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
