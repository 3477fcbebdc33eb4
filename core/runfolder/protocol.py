"""How a supervisor and its worker talk: exit codes, the memory limit, and the run folder's live files.

The two processes share no memory: the worker reports through its exit code and through files
in the run directory (status.json, progress.jsonl, the conversion marker, its scratch files),
and learns its memory limit from the environment. Everything both sides must agree on is here,
so the supervisor (core.jobs.supervisor), the launcher (core.jobs.launch), the worker
(core.jobs.worker) and the engine's stages it drives import this module and never each other.
It lives outside core.jobs so that the engine never imports core.jobs: the worker (core.jobs)
drives the engine, and the engine's stages need only these names. The durable layout
of a finished run is core.inputs.rundir.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core import posix
from core.inputs import rundir
from core.runfolder.progress import append_progress as append_progress  # progress.jsonl's two
from core.runfolder.progress import read_progress as read_progress  # ends, as callers know them
from core.types import RunStatus

# The worker's exit codes: done, a QuantLensError (its message is in status.json), out of
# memory, a bug. A native crash shows as a negative code (the signal).
EXIT_OK, EXIT_BAD_INPUT, EXIT_OOM, EXIT_BUG = 0, 2, 3, 4
MEMORY_LIMIT_ENV = "QUANTLENS_MEMORY_LIMIT_BYTES"  # the worker caps its address space to it
SUPERVISOR_PID_ENV = "QUANTLENS_SUPERVISOR_PID"  # the worker dies when this process does
# The limits a worker runs under unless the caller gives others (--timeout, --memory-gb).
DEFAULT_TIMEOUT_S = 3600.0
DEFAULT_MEMORY_LIMIT_GB = 16.0

CANCEL_FLAG = rundir.CANCEL_FLAG  # touched by whoever cancels; the supervisor stops the worker
WORKER_TMP = ".tmp"  # the worker's TMPDIR inside its run directory
# Scratch the worker keeps while it runs, removed when the run ends, however it ends.
DECODED_CACHE = ".decoded.u8"  # raw uint8 [N,H,W,C]
DECODE_STATE = ".decoded.json"
CALIBRATION_CACHE = ".calibration.npy"
REFERENCE_OUTPUTS = ".reference.f32"  # raw float32 [N,C]: the original's outputs, batch by batch
# Present while a conversion runs: which variant, on which thread (see ConversionMarker).
CONVERTING = ".converting.json"
SCRATCH_FILES = (DECODED_CACHE, DECODE_STATE, CALIBRATION_CACHE, CONVERTING, REFERENCE_OUTPUTS)


def write_status(run_dir: Path, status: RunStatus, *, error: str | None = None) -> None:
    """Set status.json's status and error, keeping its other fields; stamp the finish time."""
    path = run_dir / rundir.STATUS
    current = rundir.read_json(path) if path.exists() else {}
    current.update({"status": str(status), "error": error})
    if status.finished:
        current["finished"] = time.time()
    rundir.write_json_atomic(path, current)


def supervisor_fields(pid: int) -> dict[str, int | None]:
    """status.json's fields that name a run's supervisor: its pid, and when it started (the
    system gives a freed pid to another process or thread, so a pid alone can name a stranger)."""
    return {"supervisor_pid": pid, "supervisor_started": posix.process_started(pid)}


def supervisor_running(status: dict[str, Any]) -> bool:
    """Whether the supervisor that `status` names still runs: a zombie, or another process that
    was given its pid, counts as gone."""
    pid, started = status.get("supervisor_pid"), status.get("supervisor_started")
    return posix.same_process_alive(
        pid if isinstance(pid, int) else None, started if isinstance(started, int) else None
    )


def read_status(run_dir: Path) -> dict[str, Any]:
    """status.json of a run directory: status, error, started, finished (missing: queued)."""
    path = run_dir / rundir.STATUS
    try:
        return dict(rundir.read_json(path))
    except (OSError, json.JSONDecodeError):
        return {"status": str(RunStatus.QUEUED), "error": None, "started": None, "finished": None}


@dataclass(frozen=True)
class ConversionMarker:
    """The conversion in flight: its variant, and the thread converting it.

    A worker converts on a second thread while its main thread evaluates the previous variant.
    When the worker dies, faulthandler's dump names the thread that faulted by this same id
    ("Current thread 0x..."), which tells a converter crash from a crash on the main thread.
    """

    variant: str
    thread: int


def mark_converting(run_dir: Path, variant: str) -> None:
    """Say that the calling thread starts converting `variant` (call it on that thread)."""
    marker = {"variant": variant, "thread": threading.get_ident()}
    rundir.write_json_atomic(run_dir / CONVERTING, marker)


def clear_converting(run_dir: Path) -> None:
    """The conversion is over (done or refused): no marker is left to blame it for a crash."""
    (run_dir / CONVERTING).unlink(missing_ok=True)


def read_converting(run_dir: Path) -> ConversionMarker | None:
    """The conversion the worker was in, or None (none, or a marker it did not finish writing)."""
    try:
        data = rundir.read_json(run_dir / CONVERTING)
        return ConversionMarker(variant=str(data["variant"]), thread=int(data["thread"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None


def signature_cache_file(
    path: str,
    *,
    trusted: bool = False,
    input_size: tuple[int, int] | None = None,
    signature_key: str | None = None,
) -> Path | None:
    """Where a model's signature is remembered: keyed by path, modification time and options.

    Reading a signature costs a worker start and a TensorFlow import (seconds); the Setup page
    asks for it on every visit, so the answer is kept on disk. None when the path is missing.
    """
    model = Path(path).resolve()
    marker = model / "saved_model.pb" if model.is_dir() else model
    try:
        stat = marker.stat()
    except OSError:
        return None
    key = json.dumps(
        [str(model), stat.st_mtime_ns, stat.st_size, trusted, input_size, signature_key]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return rundir.cache_root() / "signatures" / f"{digest}.json"
