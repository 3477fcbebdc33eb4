"""Start, watch, cancel and recover jobs; supervise the worker process and map how it ended.

This module never imports TensorFlow: the web server and the CLI call it, and it runs the
model work in `python -m core.jobs.worker` children. A child that dies by a signal, runs out of
memory or outlives its time limit is turned into a one-line outcome for the variant it was
working on; the supervisor then starts a fresh worker for the variants still to do, so one
variant's crash never loses another's results.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core import posix
from core.errors import QuantLensError, UnsupportedModel
from core.history.store import RunRow, RunStore, open_store
from core.inputs import rundir
from core.jobs.worker import EXIT_BAD_INPUT, EXIT_OK, EXIT_OOM, MEMORY_LIMIT_ENV, write_status
from core.types import JobSpec, ModelSignature, ProgressEvent, RunStatus

DEFAULT_TIMEOUT_S = 3600.0
DEFAULT_MEMORY_LIMIT_GB = 16.0
TRACKING_TIMEOUT_S = 300.0  # logging a run that ended abnormally to MLflow
CANCEL_FLAG = "cancel"
RUNNER_LOCK = "runner.lock"  # in the workspace: held by the one supervisor whose worker runs
QUEUE_POLL_S = 0.5
STARTING_GRACE_S = 30.0  # a queued run this young counts as alive before its supervisor writes
STDERR_TAIL_LINES = 12
WORKER_TMP = ".tmp"  # the worker's TMPDIR inside its run directory
SIGNAL_NAMES = {
    signal.SIGSEGV: "SIGSEGV",
    signal.SIGABRT: "SIGABRT",
    signal.SIGBUS: "SIGBUS",
    signal.SIGILL: "SIGILL",
    signal.SIGFPE: "SIGFPE",
    signal.SIGKILL: "SIGKILL",
    signal.SIGTERM: "SIGTERM",
}
STEP_WORDS = {
    "load": "model loading",
    "decode": "image decoding",
    "reference": "reference inference",
    "convert": "conversion",
    "infer": "TFLite inference",
    "latency": "latency timing",
}

# The directory that holds core/: worker subprocesses start there so `-m core...` resolves to
# this source tree, whatever the caller's working directory.
SOURCE_ROOT = Path(__file__).resolve().parents[2]


def _home(home: Path | None) -> Path:
    return (home or rundir.workspace_home()).resolve()


def run_dir(run_id: str, *, home: Path | None = None) -> Path:
    """The run directory of a run id in the workspace."""
    return rundir.runs_root(_home(home)) / run_id


def new_run_id() -> str:
    """Sortable by time, unique across processes."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def _store(home: Path | None) -> RunStore:
    return open_store(_home(home))


@contextlib.contextmanager
def _opened_store(home: Path | None) -> Iterator[RunStore]:
    store = _store(home)
    try:
        yield store
    finally:
        store.close()


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
    try:
        _prepare_run_folder(target, job, run_id)
    except OSError as exc:
        raise QuantLensError(
            f"cannot write the run folder {target}: {exc.strerror or exc}; "
            "choose a writable folder (--out, or QUANTLENS_HOME)"
        ) from None
    with _opened_store(home) as store:
        store.create_run(run_id, name=job.name, run_dir=target, job=job.to_dict())
    return run_id


def _prepare_run_folder(target: Path, job: JobSpec, run_id: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for stale in (rundir.PROGRESS, rundir.REPORT, CANCEL_FLAG, rundir.STATUS, rundir.WORKER_LOG):
        (target / stale).unlink(missing_ok=True)
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


MODEL_SUFFIXES = (".keras", ".h5", ".zip")  # dropped from a default name: the stem says it


def default_run_name(model_path: str, when: datetime) -> str:
    """`model · HH:MM` (local time): short enough for a History row or a Compare label.

    The variants are left out (the run lists them); the time tells two runs of one model apart
    on the day a user compares them. A SavedModel folder keeps its name ("saved_model").
    """
    path = Path(model_path)
    model = path.stem if path.suffix.lower() in MODEL_SUFFIXES else path.name
    return f"{model or 'model'} · {when:%H:%M}"


def read_status(directory: Path) -> dict[str, Any]:
    """status.json of a run directory: status, error, started, finished (missing: queued)."""
    path = directory / rundir.STATUS
    try:
        return dict(rundir.read_json(path))
    except (OSError, json.JSONDecodeError):
        return {"status": str(RunStatus.QUEUED), "error": None, "started": None, "finished": None}


def read_progress(directory: Path) -> list[ProgressEvent]:
    """Every progress event the worker wrote, oldest first (a half-written last line is ignored)."""
    events: list[ProgressEvent] = []
    try:
        lines = (directory / rundir.PROGRESS).read_text(encoding="utf-8").splitlines()
    except OSError:
        return events
    for line in lines:
        try:
            events.append(ProgressEvent(**json.loads(line)))
        except (json.JSONDecodeError, TypeError):
            continue
    return events


_pid_alive = posix.pid_alive  # a zombie (exited, not yet reaped) counts as gone


def active_runs(*, home: Path | None = None) -> list[RunRow]:
    """Queued and running runs of the workspace whose supervisor is alive, oldest first.

    The store is the one list: dashboard runs and CLI runs (wherever their --out folder is).
    """
    with _opened_store(home) as store:
        rows = store.unfinished_runs()
    return [r for r in rows if _supervisor_alive(r.id, r.run_dir)]


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
    return len(_ahead_of(me, rows))


def _ahead_of(me: RunRow, rows: list[RunRow]) -> list[RunRow]:
    """The live runs a queued run waits for: the running ones, and those queued before it."""
    return [
        r
        for r in rows
        if r.id != me.id
        and (r.status is RunStatus.RUNNING or (r.created, r.id) < (me.created, me.id))
    ]


def launch_run(
    run_id: str,
    *,
    home: Path | None = None,
    timeout_s: float | None = None,
    memory_limit_gb: float | None = None,
) -> None:
    """Start a detached supervisor for the run and return at once; the job outlives the browser tab."""
    home_path = _home(home)
    directory = run_dir(run_id, home=home_path)
    command = [
        sys.executable,
        "-m",
        "core.jobs.launch",
        "supervise",
        str(directory),
        "--home",
        str(home_path),
    ]
    if timeout_s is not None:
        command += ["--timeout", str(timeout_s)]
    if memory_limit_gb is not None:
        command += ["--memory-gb", str(memory_limit_gb)]
    with (directory / "supervisor.log").open("ab") as log:
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


def cancel_run(run_id: str, *, home: Path | None = None) -> None:
    """Ask the supervisor to stop the run; a run with no live supervisor is marked cancelled now."""
    with _opened_store(home) as store:
        row = store.get_run(run_id)
    # A CLI run keeps its files in its --out folder; the store knows where.
    directory = row.run_dir if row is not None else run_dir(run_id, home=home)
    (directory / CANCEL_FLAG).touch()
    status = read_status(directory)
    if not RunStatus(status.get("status", "queued")).finished and not _pid_alive(
        status.get("supervisor_pid")
    ):
        _finish_run(directory, RunStatus.CANCELLED, "cancelled before it started", home=home)


def _supervisor_alive(run_id: str, directory: Path) -> bool:
    status = read_status(directory)
    if _pid_alive(status.get("supervisor_pid")):
        return True
    # Just created: its supervisor may not have written its pid yet.
    return (
        status.get("status") == str(RunStatus.QUEUED)
        and not status.get("supervisor_pid")
        and time.time() - float(status.get("created") or 0) < STARTING_GRACE_S
    )


def recover_interrupted(*, home: Path | None = None) -> list[str]:
    """Finish runs whose supervisor died (server killed, machine rebooted) as failed: "interrupted".

    The store, report.json (no variant stays pending or running) and status.json all end up
    saying the same, and a worker left behind by the dead supervisor is stopped.
    """
    with _opened_store(home) as store:
        recovered: list[str] = store.mark_interrupted(still_running=_supervisor_alive)
        rows = [store.get_run(run_id) for run_id in recovered]
    for row in rows:
        if row is None or not row.run_dir.is_dir():
            continue
        _stop_orphan_worker(row.run_dir)
        _close_unfinished_variants(row.run_dir, "failed", "interrupted")
        _finish_run(row.run_dir, RunStatus.FAILED, "interrupted", home=home)
    return recovered


def _stop_orphan_worker(directory: Path) -> None:
    """Kill the worker group of a run whose supervisor died, if it still runs this run."""
    pid = read_status(directory).get("worker_pid")
    if not isinstance(pid, int) or not _pid_alive(pid):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return
    # A recycled pid belongs to another program: only a worker of this very run is stopped.
    if b"core.jobs.worker" in cmdline and str(directory).encode() in cmdline:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _close_unfinished_variants(directory: Path, status: str, reason: str) -> None:
    """Give every pending/running variant of report.json its final status and reason."""
    path = directory / rundir.REPORT
    if not path.exists():
        return
    report = rundir.read_json(path)
    for variant in report["variants"]:
        if variant["status"] in ("pending", "running"):
            variant["status"] = status
            variant["error"] = reason
    rundir.write_json_atomic(path, report)


def _queue_message(ahead: list[RunRow]) -> str:
    if not ahead:
        return "queued: waiting for the run in progress to finish"
    names = ", ".join(r.id for r in ahead)
    return f"queued: waiting for {len(ahead)} run(s) ahead ({names})"


def _remove_scratch(directory: Path) -> None:
    """Delete the worker's scratch (decoded images, calibration, converter temp dirs).

    A worker that finishes removes them itself; one that crashed, timed out or was cancelled
    cannot, so the supervisor does it when the run ends.
    """
    import shutil

    from core.engine.pipeline import CALIBRATION_CACHE, CONVERTING, DECODE_STATE, DECODED_CACHE

    for name in (DECODED_CACHE, DECODE_STATE, CALIBRATION_CACHE, CONVERTING):
        (directory / name).unlink(missing_ok=True)
    shutil.rmtree(directory / WORKER_TMP, ignore_errors=True)


def _finish_run(
    directory: Path, status: RunStatus, error: str | None, *, home: Path | None
) -> None:
    _remove_scratch(directory)
    report_path = directory / rundir.REPORT
    run_id = read_status(directory).get("run_id") or directory.name
    with _opened_store(home) as store:
        if report_path.exists():
            report = rundir.read_json(report_path)
            report["run"]["status"] = str(status)
            report["run"]["id"] = run_id
            if status is not RunStatus.DONE:
                _note_untimed_variants(report, status)
            rundir.write_json_atomic(report_path, report)
            store.sync_report(run_id, report)
        store.set_status(run_id, status, error=error)
    # status.json is what watchers poll: it turns final only once the report and the store
    # already say the same.
    write_status(directory, status, error=error)


_ENDED_WORDS = {
    RunStatus.CANCELLED: "was cancelled",
    RunStatus.FAILED: "failed",
    RunStatus.CRASHED: "crashed",
    RunStatus.TIMEOUT: "timed out",
}


def _note_untimed_variants(report: dict[str, Any], status: RunStatus) -> None:
    """Say why a finished variant has no latency when the run ended before its timing step.

    Timing runs last, once every conversion is over, so no conversion shares the cores with
    it; timing after a cancel would go against what the user asked for.
    """
    ended = _ENDED_WORDS.get(status, f"ended ({status})")
    for variant in report["variants"]:
        if variant.get("status") == "done" and not variant.get("latency_ms"):
            variant["latency_note"] = (
                f"not timed: the run {ended} before its timing step, which runs last "
                "so no conversion shares the cores"
            )


def _stderr_text(directory: Path, *, since: int) -> str:
    """What the worker wrote to stderr since `since` (its last 256 KB at most)."""
    try:
        with (directory / rundir.WORKER_LOG).open("rb") as f:
            f.seek(max(since, f.seek(0, os.SEEK_END) - 256 * 1024))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _tail(text: str) -> str:
    """The part of a dead worker's stderr worth showing: the fatal error and where it happened.

    faulthandler dumps every thread and a very long list of extension modules; the useful
    part is its first line and the faulting ("Current") thread's innermost frames.
    """
    fatal = next((ln for ln in text.splitlines() if ln.startswith("Fatal Python error")), None)
    _, found, rest = text.rpartition("Current thread ")
    if fatal and found:
        frames = [ln for ln in rest.split("\n\n", 1)[0].splitlines()[1:] if ln.strip()]
        return "\n".join(
            [fatal, "Current thread (most recent call first):", *frames[: STDERR_TAIL_LINES - 2]]
        )
    lines = [
        ln for ln in text.splitlines() if ln.strip() and not ln.startswith("Extension modules")
    ]
    return "\n".join(lines[-STDERR_TAIL_LINES:])


def crashed_on_conversion_thread(stderr: str) -> bool:
    """Whether faulthandler's dump shows the crash on the conversion thread.

    faulthandler prints every thread and marks the faulting one "Current thread"; the
    conversion thread runs core.engine.pipeline.convert_in_background.
    """
    _, found, rest = stderr.rpartition("Current thread ")
    if not found:
        return False
    block = rest.split("\n\n", 1)[0]
    return "in convert_in_background" in block


def describe_exit(
    returncode: int, *, step: str | None, timed_out: bool, limit_gb: float, stderr_tail: str
) -> tuple[RunStatus, str]:
    """Map how a worker ended to an outcome and its one-line reason (the stderr tail is kept apart)."""
    where = f" during {STEP_WORDS.get(step or '', step or 'start-up')}"
    if timed_out:
        return RunStatus.TIMEOUT, f"timeout: stopped after the time limit{where}"
    out_of_memory = (
        returncode == EXIT_OOM or "MemoryError" in stderr_tail or "bad_alloc" in stderr_tail
    )
    if out_of_memory:
        return RunStatus.FAILED, f"out of memory (limit {limit_gb:g} GB){where}"
    if returncode < 0:
        name = SIGNAL_NAMES.get(signal.Signals(-returncode), signal.Signals(-returncode).name)
        return RunStatus.CRASHED, f"crashed ({name}){where}"
    return RunStatus.CRASHED, f"worker exited with status {returncode}{where}"


class Supervisor:
    """Runs a job's worker(s) to the end, mapping crashes to per-variant outcomes."""

    def __init__(
        self,
        directory: Path,
        *,
        home: Path | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        memory_limit_gb: float = DEFAULT_MEMORY_LIMIT_GB,
        on_event: Callable[[ProgressEvent], None] | None = None,
    ) -> None:
        self.directory = directory
        self.home = home
        self.timeout_s = timeout_s
        self.memory_limit_gb = memory_limit_gb
        self.on_event = on_event
        self._events_seen = 0
        # The worker refused the job's input (a QuantLensError): the CLI's exit status 2.
        self.bad_input = False

    def _poll_events(self) -> None:
        events = read_progress(self.directory)
        if self.on_event is not None:
            for event in events[self._events_seen :]:
                self.on_event(event)
        self._events_seen = len(events)

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env[MEMORY_LIMIT_ENV] = str(int(self.memory_limit_gb * 2**30))
        env.setdefault("QUANTLENS_HOME", str(_home(self.home)))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # The converter writes a SavedModel copy to TMPDIR and a native crash leaves it behind;
        # inside the run directory it is removed with the run's other scratch.
        scratch = self.directory / WORKER_TMP
        scratch.mkdir(exist_ok=True)
        env["TMPDIR"] = str(scratch)
        log = (self.directory / rundir.WORKER_LOG).open("ab")
        try:
            return subprocess.Popen(
                [sys.executable, "-m", "core.jobs.worker", "run", str(self.directory)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,  # its own process group, killed as a whole
                cwd=str(SOURCE_ROOT),
            )
        finally:
            log.close()

    @staticmethod
    def _kill_group(process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            posix.kill_group(process.pid)
        process.wait()

    def run(self) -> RunStatus:
        """Wait for this run's turn, then supervise it until the job ends.

        Returns:
            The run's final status.
        """
        # One store handle for the run's life: every store use inside shares its connection.
        with _opened_store(self.home):
            slot = self._wait_for_turn()
            if slot is None:
                return RunStatus.CANCELLED
            try:
                return self._run_worker()
            finally:
                os.close(slot)  # closing the descriptor releases the flock

    def _wait_for_turn(self) -> int | None:
        """Block until this run may use the machine; None when it was cancelled while queued.

        Runs of a workspace take turns, oldest first, so two runs never time their models on
        the same cores at once. The flock on runner.lock makes the claim atomic across
        processes; the store's queue order keeps it fair.

        Returns:
            The descriptor holding the runner lock (closing it lets the next run go), or None.
        """
        status = read_status(self.directory)
        status["supervisor_pid"] = os.getpid()  # from now on the run counts as alive
        rundir.write_json_atomic(self.directory / rundir.STATUS, status)
        fd = os.open(_home(self.home) / RUNNER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            if self._queue_until_free(fd):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        _finish_run(self.directory, RunStatus.CANCELLED, "cancelled while queued", home=self.home)
        return None

    def _queue_until_free(self, fd: int) -> bool:
        """True once this run holds the runner lock; False when cancelled while queued."""
        said = None
        try:
            while not (self.directory / CANCEL_FLAG).exists():
                ahead = self._runs_ahead()
                if not any(r.status is RunStatus.QUEUED for r in ahead):
                    with contextlib.suppress(BlockingIOError):
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        return True
                message = _queue_message(ahead)
                if message != said and self.on_event is not None:
                    event = ProgressEvent("queued", 0.0, message, time=time.time())
                    self.on_event(event)
                said = message
                time.sleep(QUEUE_POLL_S)
        except KeyboardInterrupt:  # Ctrl-C in the CLI while queued: the run never started
            pass
        return False

    def _runs_ahead(self) -> list[RunRow]:
        rows = active_runs(home=self.home)
        me = next((r for r in rows if r.id == self._run_id()), None)
        if me is None:  # not in the store: wait for whatever runs
            return [r for r in rows if r.status is RunStatus.RUNNING]
        return _ahead_of(me, rows)

    def _run_worker(self) -> RunStatus:
        started = time.time()
        status = read_status(self.directory)
        status.update(
            {"status": str(RunStatus.RUNNING), "started": started, "supervisor_pid": os.getpid()}
        )
        rundir.write_json_atomic(self.directory / rundir.STATUS, status)
        self._set_store_status(RunStatus.RUNNING)
        deadline = started + self.timeout_s
        for _attempt in range(64):  # one restart per crashed variant at most
            log_offset = (
                (self.directory / rundir.WORKER_LOG).stat().st_size
                if (self.directory / rundir.WORKER_LOG).exists()
                else 0
            )
            process = self._spawn()
            rundir.write_json_atomic(
                self.directory / rundir.STATUS,
                {**read_status(self.directory), "worker_pid": process.pid},
            )
            timed_out = cancelled = False
            try:
                while process.poll() is None:
                    self._poll_events()
                    if (self.directory / CANCEL_FLAG).exists():
                        cancelled = True
                        self._kill_group(process)
                        break
                    if time.time() > deadline:
                        timed_out = True
                        self._kill_group(process)
                        break
                    time.sleep(0.2)
            except KeyboardInterrupt:  # Ctrl-C in the CLI: the worker is in its own group
                self._kill_group(process)
                cancelled = True
            self._poll_events()
            self._sync_report_to_store()
            returncode = process.returncode
            if cancelled:
                self._mark_unfinished_variants("cancelled", "cancelled by the user")
                self._end(RunStatus.CANCELLED, "cancelled by the user")
                return RunStatus.CANCELLED
            if returncode == EXIT_OK:
                _finish_run(self.directory, RunStatus.DONE, None, home=self.home)
                return RunStatus.DONE
            if returncode == EXIT_BAD_INPUT:
                self.bad_input = True
                error = read_status(self.directory).get("error") or "the job failed"
                self._mark_unfinished_variants("failed", "not run: " + error)
                self._end(RunStatus.FAILED, error)
                return RunStatus.FAILED
            stderr = _stderr_text(self.directory, since=log_offset)
            tail = _tail(stderr)
            variant, step = self._crash_site(stderr, returncode)
            outcome, reason = describe_exit(
                returncode,
                step=step,
                timed_out=timed_out,
                limit_gb=self.memory_limit_gb,
                stderr_tail=tail,
            )
            if variant is None or timed_out:
                # Outside a variant (or out of time) nothing more can be saved by a restart.
                if variant is not None:
                    self._mark_variant(variant, str(outcome), reason, tail)
                self._mark_unfinished_variants(str(outcome), f"not run: {reason}")
                self._end(outcome, reason)
                return outcome
            self._mark_variant(variant, str(outcome), reason, tail)
            self._write_event(
                ProgressEvent(
                    step="variant",
                    fraction=1.0,
                    message=f"{variant}: {reason}",
                    variant=variant,
                    time=time.time(),
                )
            )
        self._end(RunStatus.CRASHED, "the worker kept crashing")
        return RunStatus.CRASHED

    def _end(self, status: RunStatus, reason: str) -> None:
        """Finish a run that ended abnormally, logging what it has to MLflow first."""
        self._track(status)
        _finish_run(self.directory, status, reason, home=self.home)

    def _track(self, status: RunStatus) -> None:
        """Log a run the worker could not log itself (it did not finish) to MLflow, if asked.

        MLflow runs in its own short-lived process, never in the supervisor (which the web
        server starts) or the server; a failure becomes a warning in report.json.
        """
        job = rundir.read_json(self.directory / rundir.JOB)
        if not job.get("mlflow_uri") or not (self.directory / rundir.REPORT).exists():
            return
        command = [sys.executable, "-m", "core.reporting.tracking", str(self.directory)]
        with (self.directory / rundir.WORKER_LOG).open("ab") as log:
            try:
                subprocess.run(
                    [*command, "--status", str(status)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    timeout=TRACKING_TIMEOUT_S,
                    check=False,
                    cwd=str(SOURCE_ROOT),
                )
            except subprocess.TimeoutExpired:
                print("MLflow logging timed out", file=sys.stderr)

    def _write_event(self, event: ProgressEvent) -> None:
        with (self.directory / rundir.PROGRESS).open("a", encoding="utf-8") as f:
            f.write(json.dumps(event.to_dict()) + "\n")

    def _report(self) -> dict[str, Any] | None:
        path = self.directory / rundir.REPORT
        return rundir.read_json(path) if path.exists() else None

    def _crash_site(self, stderr: str, returncode: int) -> tuple[str | None, str | None]:
        """(variant, step) a dead worker was in: the conversion thread's, or the main thread's.

        Running out of memory while a conversion is in flight is blamed on the conversion: it
        is by far the most memory-hungry step, and the main thread often only trips over the
        exhausted limit.
        """
        from core.engine.pipeline import CONVERTING

        marker = self.directory / CONVERTING
        out_of_memory = returncode == EXIT_OOM or "MemoryError" in stderr
        if marker.exists() and (crashed_on_conversion_thread(stderr) or out_of_memory):
            return marker.read_text(encoding="utf-8").strip(), "convert"
        variant = self._running_variant()
        # Conversion events of other variants come from the conversion thread; the main
        # thread's step is the last event that is not one of those.
        for event in reversed(read_progress(self.directory)):
            if event.step != "convert" or event.variant == variant:
                return variant, event.step
        return variant, None

    def _running_variant(self) -> str | None:
        report = self._report()
        if report is None:
            return None
        return next((v["name"] for v in report["variants"] if v["status"] == "running"), None)

    def _mark_variant(self, name: str, status: str, reason: str, tail: str) -> None:
        report = self._report()
        if report is None:
            return
        for variant in report["variants"]:
            if variant["name"] == name:
                variant["status"] = status
                variant["error"] = reason
                variant["stderr_tail"] = tail
        rundir.write_json_atomic(self.directory / rundir.REPORT, report)
        self._sync_report_to_store()

    def _mark_unfinished_variants(self, status: str, reason: str) -> None:
        _close_unfinished_variants(self.directory, status, reason)

    def _run_id(self) -> str:
        return str(read_status(self.directory).get("run_id") or self.directory.name)

    def _set_store_status(self, status: RunStatus) -> None:
        with _opened_store(self.home) as store:
            store.set_status(self._run_id(), status)

    def _sync_report_to_store(self) -> None:
        report = self._report()
        if report is None:
            return
        try:
            with _opened_store(self.home) as store:
                store.sync_report(self._run_id(), report)
        except QuantLensError as exc:  # a locked store must not stop the job; the files hold it all
            print(f"store not updated: {exc}", file=sys.stderr)


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
    import hashlib

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


def _signature_from_json(data: dict[str, Any]) -> ModelSignature:
    return ModelSignature(**{**data, "input_shape": tuple(data["input_shape"])})


def inspect_model(
    path: str,
    *,
    timeout_s: float = 120,
    trusted: bool = False,
    input_size: tuple[int, int] | None = None,
    signature_key: str | None = None,
) -> ModelSignature:
    """Read a model's signature in a worker process (the caller never loads TensorFlow).

    Raises:
        QuantLensError subclasses with the worker's one-line message; UnsupportedModel when the
        worker crashes or times out on the model.
    """
    from core import errors

    cached = signature_cache_file(
        path, trusted=trusted, input_size=input_size, signature_key=signature_key
    )
    if cached is not None and cached.is_file():
        try:
            return _signature_from_json(json.loads(cached.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            pass  # a damaged cache entry is read again from the model
    command = [sys.executable, "-m", "core.jobs.worker", "inspect", path]
    if trusted:
        command.append("--trusted")
    if input_size:
        command += ["--input-size", f"{input_size[0]}x{input_size[1]}"]
    if signature_key:
        command += ["--signature", signature_key]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.setdefault(MEMORY_LIMIT_ENV, str(int(DEFAULT_MEMORY_LIMIT_GB * 2**30)))
    try:
        done = subprocess.run(
            command,
            capture_output=True,
            timeout=timeout_s,
            env=env,
            check=False,
            start_new_session=True,
            cwd=str(SOURCE_ROOT),
        )
    except subprocess.TimeoutExpired:
        raise UnsupportedModel(
            f"reading the model took longer than {timeout_s:g} s; check the path or the model"
        ) from None
    for line in reversed(done.stdout.decode("utf-8", "replace").splitlines()):
        try:
            answer = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "signature" in answer:
            if cached is not None:
                rundir.write_json_atomic(cached, answer["signature"])
            return _signature_from_json(answer["signature"])
        if "error" in answer:
            cls = getattr(errors, answer.get("kind", ""), QuantLensError)
            if not (isinstance(cls, type) and issubclass(cls, QuantLensError)):
                cls = QuantLensError
            raise cls(answer["error"])
    _, reason = describe_exit(
        done.returncode,
        step="load",
        timed_out=False,
        limit_gb=DEFAULT_MEMORY_LIMIT_GB,
        stderr_tail=done.stderr.decode("utf-8", "replace"),
    )
    raise UnsupportedModel(f"the model could not be read: {reason}")


# -- the embedded demo, built in a worker ------------------------------------------------------
def _demo_dir(home: Path | None) -> Path:
    from core.engine.demo import demo_root

    return demo_root(_home(home))


def demo_build_state(*, home: Path | None = None) -> tuple[str, str]:
    """("ready" | "building" | "failed" | "missing", the last progress message)."""
    from core.engine.demo import demo_paths

    root = _demo_dir(home)
    if demo_paths(_home(home)).ready():
        return "ready", "the demo is built"
    log = root.parent / "demo-build.log"
    pid_file = root.parent / "demo-build.pid"
    message = ""
    if log.exists():
        lines = [
            ln
            for ln in log.read_text(encoding="utf-8", errors="replace").splitlines()
            if ln.strip()
        ]
        message = lines[-1] if lines else ""
    if pid_file.exists():
        try:
            pid = int(pid_file.read_text().strip())
        except ValueError:
            pid = 0
        if _pid_alive(pid):
            return "building", message.partition(" ")[2] or "starting"
        return "failed", message or "the demo build stopped"
    return "missing", ""


def start_demo_build(*, home: Path | None = None) -> None:
    """Build the demo in a detached worker unless it is ready or already being built."""
    state, _ = demo_build_state(home=home)
    if state in ("ready", "building"):
        return
    root = _demo_dir(home)
    root.parent.mkdir(parents=True, exist_ok=True)
    with (root.parent / "demo-build.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "core.jobs.worker", "demo", str(root)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(SOURCE_ROOT),
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", QUANTLENS_HOME=str(_home(home))),
        )
    (root.parent / "demo-build.pid").write_text(str(process.pid))
    threading.Thread(target=process.wait, daemon=True).start()


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m core.jobs.launch")
    parser.add_argument("command", choices=["supervise"])
    parser.add_argument("run_dir")
    parser.add_argument("--home", default=None)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S)
    parser.add_argument("--memory-gb", type=float, default=DEFAULT_MEMORY_LIMIT_GB)
    args = parser.parse_args(argv)
    home = Path(args.home) if args.home else None
    supervisor = Supervisor(
        Path(args.run_dir), home=home, timeout_s=args.timeout, memory_limit_gb=args.memory_gb
    )
    status = supervisor.run()
    return 0 if status is RunStatus.DONE else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
