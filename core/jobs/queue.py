"""Which runs of a workspace are alive, and the turns they take on the machine.

Runs of a workspace take turns, oldest first, so two runs never time their models on the same
cores at once. The flock on runner.lock makes the claim atomic across processes; the store's
queue order keeps it fair.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from core.history.store import RunRow
from core.jobs.workspace import opened_store, resolved_home
from core.runfolder import protocol
from core.types import ProgressEvent, RunStatus

RUNNER_LOCK = "runner.lock"  # in the workspace: held by the one supervisor whose worker runs
QUEUE_POLL_S = 0.5
STARTING_GRACE_S = 30.0  # a queued run this young counts as alive before its supervisor writes


def supervisor_alive(run_id: str, directory: Path) -> bool:
    """Whether the run's supervisor runs (or, just created, is about to)."""
    status = protocol.read_status(directory)
    if protocol.supervisor_running(status):
        return True
    # Just created: its supervisor may not have written its pid yet.
    return (
        status.get("status") == str(RunStatus.QUEUED)
        and not status.get("supervisor_pid")
        and time.time() - float(status.get("created") or 0) < STARTING_GRACE_S
    )


def active_runs(*, home: Path | None = None) -> list[RunRow]:
    """Queued and running runs of the workspace whose supervisor is alive, oldest first.

    The store is the one list: dashboard runs and CLI runs (wherever their --out folder is).
    """
    with opened_store(home) as store:
        rows = store.unfinished_runs()
    return [r for r in rows if supervisor_alive(r.id, r.run_dir)]


def active_run_id(*, home: Path | None = None) -> str | None:
    """The run whose worker runs now, else the first in the queue, else None."""
    rows = active_runs(home=home)
    running = [r for r in rows if r.status is RunStatus.RUNNING]
    first = next(iter(running or rows), None)
    return None if first is None else first.id


def queue_position(run_id: str, *, home: Path | None = None) -> int | None:
    """How many live runs are ahead of a queued run (None when it is not queued)."""
    rows = active_runs(home=home)
    me = next((r for r in rows if r.id == run_id), None)
    if me is None or me.status is not RunStatus.QUEUED:
        return None
    return len(ahead_of(me, rows))


def ahead_of(me: RunRow, rows: list[RunRow]) -> list[RunRow]:
    """The live runs a queued run waits for: the running ones, and those queued before it."""
    return [
        r
        for r in rows
        if r.id != me.id
        and (r.status is RunStatus.RUNNING or (r.created, r.id) < (me.created, me.id))
    ]


def runs_ahead(run_id: str, *, home: Path | None) -> list[RunRow]:
    """The live runs `run_id` waits for; a run the store does not know waits for the running."""
    rows = active_runs(home=home)
    me = next((r for r in rows if r.id == run_id), None)
    if me is None:
        return [r for r in rows if r.status is RunStatus.RUNNING]
    return ahead_of(me, rows)


def queue_message(ahead: list[RunRow]) -> str:
    if not ahead:
        return "queued: waiting for the run in progress to finish"
    names = ", ".join(r.id for r in ahead)
    return f"queued: waiting for {len(ahead)} run(s) ahead ({names})"


def claim_turn(
    directory: Path,
    run_id: str,
    *,
    home: Path | None,
    on_event: Callable[[ProgressEvent], None] | None = None,
) -> int | None:
    """Block until this run may use the machine; None when it was cancelled while queued.

    Ctrl-C (or SIGTERM/SIGHUP turned into one) while waiting propagates to the caller, which
    ends the run as cancelled.

    Returns:
        The descriptor holding the runner lock (closing it lets the next run go), or None.
    """
    lock = resolved_home(home) / RUNNER_LOCK
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        if _queue_until_free(fd, directory, run_id, home=home, on_event=on_event):
            return fd
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None


def _queue_until_free(
    fd: int,
    directory: Path,
    run_id: str,
    *,
    home: Path | None,
    on_event: Callable[[ProgressEvent], None] | None,
) -> bool:
    """True once this run holds the runner lock; False when cancelled while queued."""
    said = None
    while not (directory / protocol.CANCEL_FLAG).exists():
        ahead = runs_ahead(run_id, home=home)
        if not any(r.status is RunStatus.QUEUED for r in ahead):
            with contextlib.suppress(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
        message = queue_message(ahead)
        if message != said and on_event is not None:
            on_event(ProgressEvent("queued", 0.0, message, time=time.time()))
        said = message
        time.sleep(QUEUE_POLL_S)
    return False
