"""Start, cancel and recover runs: what the dashboard and the CLI call to run a job.

Creating a run writes its folder and its store row before any work starts; launching starts a
detached supervisor (core.jobs.supervisor) that outlives the browser tab. The names the
dashboard reads about runs (status, progress, the queue, model inspection, the demo build) are
re-exported here, so `from core.jobs import launch as jobs` is its one entry to this package.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from core import posix
from core.errors import QuantLensError
from core.history.store import RunStore
from core.inputs import rundir
from core.jobs import outcome, queue
from core.jobs.demo_jobs import CHAIN_ENV as DEMO_CHAIN_ENV
from core.jobs.demo_jobs import (
    MOBILENET,
    OUTLIER,
    demo_build_state,
    demo_build_steps,
    start_demo_build,
)
from core.jobs.inspection import inspect_model, preset_trial
from core.jobs.queue import active_run_id, active_runs, queue_position
from core.jobs.workspace import SOURCE_ROOT, opened_store, resolved_home, run_dir
from core.runfolder import protocol
from core.runfolder.protocol import read_progress, read_status
from core.types import JobSpec, RunStatus, VariantStatus

__all__ = [
    "DEMO_CHAIN_ENV",
    "MOBILENET",
    "OUTLIER",
    "active_run_id",
    "active_runs",
    "cancel_run",
    "create_run",
    "default_run_name",
    "demo_build_state",
    "demo_build_steps",
    "diagnose_run",
    "inspect_model",
    "launch_run",
    "new_run_id",
    "preset_trial",
    "queue_position",
    "read_progress",
    "read_status",
    "recover_interrupted",
    "rescore_run",
    "run_dir",
    "start_demo_build",
]

MODEL_SUFFIXES = (".keras", ".h5", ".zip")  # dropped from a default name: the stem says it


def new_run_id() -> str:
    """Sortable by time, unique across processes."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def create_run(job: JobSpec, *, home: Path | None = None, directory: Path | None = None) -> str:
    """Create the run's directory and its store row (status queued) before any work starts.

    Args:
        job: what to run.
        home: the workspace; default $QUANTLENS_HOME or ./workspace.
        directory: where the run's files go (the CLI's --out); default runs/<run_id>.

    Returns:
        The new run id.
    """
    run_id = new_run_id()
    if not job.name:  # named once here, so job.json, report.json and the store agree
        job = dataclasses.replace(job, name=default_run_name(job.model_path, datetime.now()))
    target = (directory or run_dir(run_id, home=home)).resolve()
    with opened_store(home) as store:
        previous = _previous_run(target, store)
        try:
            _prepare_run_folder(target, job, run_id)
        except OSError as exc:
            raise QuantLensError(
                f"cannot write the run folder {target}: {exc.strerror or exc}; "
                "choose a writable folder (--out, or QUANTLENS_HOME)"
            ) from None
        store.create_run(run_id, name=job.name, run_dir=target, job=job.to_dict())
        if previous is not None:
            # Its files are gone: a History row for it would show this run's files as its own.
            store.remove_run(previous)
    return run_id


def _previous_run(target: Path, store: RunStore) -> str | None:
    """The id of the earlier run whose files `target` (a reused --out) holds, if the store has it.

    Raises:
        QuantLensError: that run is still queued or running there.
    """
    with contextlib.suppress(OSError, ValueError, AttributeError):
        previous = str(rundir.read_json(target / rundir.STATUS).get("run_id") or "")
        row = store.get_run(previous) if previous else None
        if row is not None and row.run_dir.resolve() == target:
            if not row.status.finished:
                raise QuantLensError(
                    f"{target} holds run {previous}, which is still {row.status}; wait for it, "
                    "cancel it, or choose another --out"
                )
            return previous
    return None


def _prepare_run_folder(target: Path, job: JobSpec, run_id: str) -> None:
    """Create the run folder, first removing every file an earlier run left there (--out)."""
    target.mkdir(parents=True, exist_ok=True)
    rundir.clear_previous_run(target)
    rundir.write_json_atomic(target / rundir.JOB, job.to_dict())
    rundir.write_json_atomic(
        target / rundir.STATUS,
        {
            "status": str(RunStatus.QUEUED),
            "error": None,
            "run_id": run_id,
            "created": time.time(),
            "finished": None,
        },
    )


def default_run_name(model_path: str, when: datetime) -> str:
    """`model · HH:MM` (local time): short enough for a History row or a Compare label.

    The variants are left out (the run lists them); the time tells two runs of one model apart
    on the day a user compares them. A SavedModel folder keeps its name ("saved_model").
    """
    path = Path(model_path)
    model = path.stem if path.suffix.lower() in MODEL_SUFFIXES else path.name
    return f"{model or 'model'} · {when:%H:%M}"


def launch_run(
    run_id: str,
    *,
    home: Path | None = None,
    timeout_s: float | None = None,
    memory_limit_gb: float | None = None,
) -> None:
    """Start a detached supervisor for the run and return at once; the job outlives the browser tab."""
    home_path = resolved_home(home)
    directory = _stored_run_dir(run_id, home_path)
    command = [
        sys.executable,
        "-m",
        "core.jobs.supervisor",
        "supervise",
        str(directory),
        "--home",
        str(home_path),
    ]
    if timeout_s is not None:
        command += ["--timeout", str(timeout_s)]
    if memory_limit_gb is not None:
        command += ["--memory-gb", str(memory_limit_gb)]
    with (directory / rundir.SUPERVISOR_LOG).open("ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            cwd=str(SOURCE_ROOT),
        )
    # Reap it when it ends so no zombie outlives the job in the server process.
    threading.Thread(target=process.wait, daemon=True).start()


def _stored_run_dir(run_id: str, home: Path) -> Path:
    """runs/<id> in the workspace, else the folder the store names (a CLI run made with --out)."""
    local = run_dir(run_id, home=home)
    if local.is_dir():
        return local
    with opened_store(home) as store:
        row = store.get_run(run_id)
    return row.run_dir if row is not None else local


def rescore_run(
    run_id: str,
    parent: str,
    layers: list[str] | tuple[str, ...],
    *,
    home: Path | None = None,
    fix: str = "keep_float",
) -> str:
    """Add `parent` with a fix (`layers` kept in float by default; core.jobs.rescore) to the
    finished run and start its job; returns the new variant's name.

    Raises:
        QuantLensError: why it cannot be re-scored, in one line.
    """
    from core.jobs.rescore import add_rescore_variant

    home_path = resolved_home(home)
    name = add_rescore_variant(
        _stored_run_dir(run_id, home_path), parent, layers, home=home_path, fix=fix
    )
    launch_run(run_id, home=home_path)
    return name


def diagnose_run(run_id: str, *, home: Path | None = None) -> list[str]:
    """Ask for the per-layer diagnosis of the finished run's variants that flipped no image and
    start its job (core.jobs.rescore.request_diagnosis); returns those variants (none waiting:
    empty, and nothing started).

    Raises:
        QuantLensError: why the run cannot be re-opened, in one line.
    """
    from core.jobs.rescore import request_diagnosis

    home_path = resolved_home(home)
    names = request_diagnosis(_stored_run_dir(run_id, home_path), home=home_path)
    if names:
        launch_run(run_id, home=home_path)
    return names


def cancel_run(run_id: str, *, home: Path | None = None) -> None:
    """Ask the supervisor to stop the run; a run with no live supervisor is marked cancelled now."""
    with opened_store(home) as store:
        row = store.get_run(run_id)
    # A CLI run keeps its files in its --out folder; the store knows where.
    directory = row.run_dir if row is not None else run_dir(run_id, home=home)
    (directory / protocol.CANCEL_FLAG).touch()
    status = read_status(directory)
    if not RunStatus(status.get("status", "queued")).finished and not protocol.supervisor_running(
        status
    ):
        # A re-scored run's report holds the pending variant: it ends cancelled, not pending.
        outcome.close_unfinished_variants(
            directory, VariantStatus.CANCELLED, "cancelled before it started"
        )
        outcome.finish_run(directory, RunStatus.CANCELLED, "cancelled before it started", home=home)


def recover_interrupted(*, home: Path | None = None) -> list[str]:
    """Finish runs whose supervisor died (server killed, machine rebooted) as failed: "interrupted".

    The store, report.json (no variant stays pending or running) and status.json all end up
    saying the same, and a worker left behind by the dead supervisor is stopped.
    """
    with opened_store(home) as store:
        recovered: list[str] = store.mark_interrupted(still_running=queue.supervisor_alive)
        rows = [store.get_run(run_id) for run_id in recovered]
    for row in rows:
        if row is None or not row.run_dir.is_dir():
            continue
        _stop_orphan_worker(row.run_dir)
        outcome.close_unfinished_variants(row.run_dir, VariantStatus.FAILED, "interrupted")
        outcome.finish_run(row.run_dir, RunStatus.FAILED, "interrupted", home=home)
    return recovered


def _stop_orphan_worker(directory: Path) -> None:
    """Kill the worker group of a run whose supervisor died, if it still runs this run."""
    pid = read_status(directory).get("worker_pid")
    if not isinstance(pid, int):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        cmdline = b""
    # A recycled pid belongs to another program: only a worker of this very run is stopped. The
    # cmdline is read before asking whether the pid runs: a worker that ends between the two
    # looks (its PR_SET_PDEATHSIG arriving) is a zombie with an empty cmdline, and its group
    # must still go.
    ours = b"core.jobs.worker" in cmdline and str(directory).encode() in cmdline
    if cmdline and posix.pid_alive(pid) and not ours:
        return
    # This run's worker, or what a dead one started and left in its group (the worker died
    # with its supervisor). Linux never gives a pid to a new process while a group of that id
    # has members, so a group answering to this id is the dead worker's.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
