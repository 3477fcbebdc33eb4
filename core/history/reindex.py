"""Where the run index can be rebuilt from: every run folder holds its job, status and report.

The SQLite store is an index over run folders, not their only record. When a corrupt database
is moved aside (or on `python -m core history --reindex`), the store re-adds every run found
here. Runs live under the workspace's `runs/`; a CLI run made with `--out DIR` lives anywhere,
so the store notes each such folder in `run-folders.jsonl` beside the database as it creates
the run, and the folders named by a moved-aside database are tried as well.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.errors import QuantLensError
from core.inputs import rundir
from core.reporting.runmodel import RunInfo, RunReport, read_report
from core.types import RunStatus

FOLDERS_FILE = "run-folders.jsonl"  # in the workspace: run folders outside runs/, one a line
_CORRUPT_GLOB = "*.corrupt-*"  # databases moved aside (their -wal/-shm beside them)


@dataclass(frozen=True)
class FoundRun:
    """One run as its folder records it: what the store's runs row needs, and its report."""

    run_id: str
    name: str
    run_dir: Path
    created: str  # ISO 8601, UTC, as the store writes it
    status: RunStatus
    finished: str | None
    error: str | None
    job: dict[str, Any]
    report: RunReport | None


def remember_folder(home: Path, run_dir: Path) -> None:
    """Note a run folder outside `runs/`, so a rebuilt index finds it (appends one line)."""
    if _under_runs(home, run_dir):
        return
    _append(home, {"run_dir": str(run_dir)})


def forget_folder(home: Path, run_dir: Path) -> None:
    """A run deleted from the history whose folder stays on disk is not brought back."""
    if not _under_runs(home, run_dir):
        _append(home, {"forget": str(run_dir)})


def _under_runs(home: Path, run_dir: Path) -> bool:
    return Path(run_dir).resolve().parent == rundir.runs_root(home).resolve()


def _append(home: Path, entry: dict[str, str]) -> None:
    line = (json.dumps(entry) + "\n").encode("utf-8")
    # One write with O_APPEND: lines of two processes never interleave.
    fd = os.open(home / FOLDERS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def candidate_folders(home: Path, databases: Iterable[Path] = ()) -> list[Path]:
    """Every folder that may hold a run of the workspace, each once, oldest note first.

    `runs/` holds the workspace's own; `run-folders.jsonl` the `--out` folders; a damaged
    database may still name some in its `run_dir` column.
    """
    found: dict[Path, None] = {}
    runs = rundir.runs_root(home)
    if runs.is_dir():
        for child in sorted(runs.iterdir()):
            if child.is_dir() and not child.name.startswith("."):  # not a delete's trash
                found[child.resolve()] = None
    for database in [*databases, *sorted(home.glob(_CORRUPT_GLOB))]:
        if not database.name.endswith(("-wal", "-shm")):
            for folder in folders_in_database(database):
                found.setdefault(folder.resolve(), None)
    with contextlib.suppress(OSError):
        for raw in (home / FOLDERS_FILE).read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(raw)
            except ValueError:
                continue  # a line cut short by a crash
            if entry.get("run_dir"):
                found.setdefault(Path(entry["run_dir"]).resolve(), None)
            elif entry.get("forget"):
                found.pop(Path(entry["forget"]).resolve(), None)
    return [folder for folder in found if folder.is_dir()]


def folders_in_database(database: Path) -> list[Path]:
    """The run folders a (possibly damaged) database names; none when it cannot be read.

    Opened read-only through SQLite only, so the file kept aside stays as it was found.
    """
    try:
        with contextlib.closing(
            sqlite3.connect(database.resolve().as_uri() + "?mode=ro", uri=True, timeout=1)
        ) as conn:
            rows = conn.execute("SELECT run_dir FROM runs").fetchall()
    except sqlite3.Error:
        return []
    return [Path(str(r[0])) for r in rows if r[0]]


def read_run_folder(directory: Path) -> FoundRun | None:
    """The run a folder records, or None when it is not a run folder (no job.json)."""
    try:
        job = dict(rundir.read_json(directory / rundir.JOB))
    except (OSError, ValueError, TypeError):
        return None
    status = _json_object(directory / rundir.STATUS)
    report: RunReport | None = None
    if (directory / rundir.REPORT).is_file():
        with contextlib.suppress(QuantLensError):
            report = read_report(directory)
    run = report.run if report is not None else None
    return FoundRun(
        run_id=str(status.get("run_id") or (run.id if run else "") or directory.name),
        name=_run_name(run, job, directory),
        run_dir=directory,
        created=_created(status, run.created if run else None, directory),
        status=_status(status.get("status"), run.status if run else None),
        finished=_iso(status.get("finished")),
        error=None if status.get("error") is None else str(status["error"]),
        job=job,
        report=report,
    )


def _run_name(run: RunInfo | None, job: dict[str, Any], directory: Path) -> str:
    """A run's name (not a variant's): a rename reaches a finished run's report.json, while
    job.json keeps the first name; a folder with neither is named after itself."""
    if run is not None and run.name:
        return str(run.name)
    first = job.get("name")
    return str(first) if first else directory.name


def _json_object(path: Path) -> dict[str, Any]:
    try:
        data = rundir.read_json(path)
    except (OSError, ValueError):
        return {}
    return dict(data) if isinstance(data, dict) else {}


def _status(*recorded: object) -> RunStatus:
    """status.json's status, else the report's; a folder saying neither ended somehow: failed."""
    for value in recorded:
        with contextlib.suppress(ValueError):
            if value:
                return RunStatus(str(value))
    return RunStatus.FAILED


def _created(status: dict[str, Any], report_created: str | None, directory: Path) -> str:
    """When the run was created: status.json's stamp, else the report's, else the folder's."""
    stamp = _iso(status.get("created"))
    if stamp is None and report_created:
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(report_created)
            stamp = _iso((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp())
    return stamp or _iso(directory.stat().st_mtime) or ""


def _iso(epoch: object) -> str | None:
    if not isinstance(epoch, int | float) or isinstance(epoch, bool):
        return None
    return datetime.fromtimestamp(float(epoch), UTC).isoformat(timespec="microseconds")
