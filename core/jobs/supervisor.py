"""Supervise a run's worker process: wait for the run's turn, start the worker, watch it, and
turn how it ended into outcomes; restart it for the variants still to do after a crash.

    python -m core.jobs.supervisor supervise RUN_DIR [--home H] [--timeout S] [--memory-gb G]

This module never imports TensorFlow or the engine: the web server and the CLI run it, and the
model work runs in `python -m core.jobs.worker` children. A child that dies by a signal, runs
out of memory or outlives its time limit is turned into a one-line outcome for the variant it
was working on (core.jobs.crash); a fresh worker then takes the variants still to do, so one
variant's crash never loses another's results.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core import posix
from core.inputs import rundir
from core.jobs import crash, outcome, queue
from core.jobs.workspace import SOURCE_ROOT, opened_store, resolved_home
from core.runfolder import protocol
from core.runfolder.progress import ProgressReader
from core.runfolder.protocol import DEFAULT_MEMORY_LIMIT_GB, DEFAULT_TIMEOUT_S
from core.types import ProgressEvent, RunStatus, VariantStatus

TRACKING_TIMEOUT_S = 300.0  # logging a run that ended abnormally to MLflow
MAX_WORKERS = 64  # one restart per crashed variant at most
POLL_S = 0.2


@dataclass(frozen=True)
class WorkerEnd:
    """How one worker process ended, and where its stderr starts in worker.log."""

    returncode: int
    log_offset: int
    timed_out: bool = False
    cancelled: bool = False


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
        self._progress = ProgressReader(directory)  # only new lines are read at each poll
        # The worker refused the job's input (a QuantLensError): the CLI's exit status 2.
        self.bad_input = False
        # The signal that cancelled the run (SIGINT for Ctrl-C, SIGTERM, SIGHUP), else None:
        # the CLI exits with 128 + it.
        self.interrupted_by: int | None = None

    def run(self) -> RunStatus:
        """Wait for this run's turn, then supervise it until the job ends.

        Returns:
            The run's final status.
        """
        # One store handle for the run's life: every store use inside shares its connection.
        with opened_store(self.home):
            # From now on the run counts as alive, while this very process runs.
            self._set_status(**protocol.supervisor_fields(os.getpid()))
            run_id = outcome.run_id_of(self.directory)
            try:
                slot = queue.claim_turn(
                    self.directory, run_id, home=self.home, on_event=self.on_event
                )
            except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM or SIGHUP while queued
                self.interrupted_by = posix.interrupt_signal(exc)
                slot = None
            if slot is None:
                self._finish(RunStatus.CANCELLED, self._cancel_reason("cancelled while queued"))
                return RunStatus.CANCELLED
            try:
                return self._run_workers()
            finally:
                os.close(slot)  # closing the descriptor releases the flock

    def _run_workers(self) -> RunStatus:
        started = time.time()
        self._set_status(status=str(RunStatus.RUNNING), started=started)
        with opened_store(self.home) as store:
            store.set_status(outcome.run_id_of(self.directory), RunStatus.RUNNING)
        deadline = started + self.timeout_s
        for _ in range(MAX_WORKERS):
            final = self._settle(self._run_one_worker(deadline))
            if final is not None:
                return final
        self._end(RunStatus.CRASHED, "the worker kept crashing")
        return RunStatus.CRASHED

    def _run_one_worker(self, deadline: float) -> WorkerEnd:
        """Start a worker and wait until it exits, is cancelled or runs out of time."""
        log_offset = crash.log_size(self.directory)
        protocol.clear_converting(self.directory)  # a dead worker's marker blames nothing now
        process = start_worker(self.directory, self.memory_limit_gb, home=self.home)
        self._set_status(worker_pid=process.pid)
        timed_out = cancelled = False
        try:
            while process.poll() is None:
                self._poll_events()
                cancelled = (self.directory / protocol.CANCEL_FLAG).exists()
                timed_out = not cancelled and time.time() > deadline
                if cancelled or timed_out:
                    break
                time.sleep(POLL_S)
        except KeyboardInterrupt as exc:
            # Ctrl-C, SIGTERM or SIGHUP to the CLI: the worker, in its own group, got none.
            self.interrupted_by = posix.interrupt_signal(exc)
            cancelled = True
        if cancelled or timed_out:  # the whole group: whatever the model started ends too
            self._kill_group(process)
        self._poll_events()
        outcome.sync_report_to_store(self.directory, home=self.home)
        return WorkerEnd(process.returncode, log_offset, timed_out, cancelled)

    def _settle(self, end: WorkerEnd) -> RunStatus | None:
        """The run's final status after this worker, or None to start another one."""
        if end.cancelled:
            reason = self._cancel_reason("cancelled by the user")
            outcome.close_unfinished_variants(self.directory, VariantStatus.CANCELLED, reason)
            self._end(RunStatus.CANCELLED, reason)
            return RunStatus.CANCELLED
        if end.returncode == protocol.EXIT_OK:
            self._finish(RunStatus.DONE, None)
            return RunStatus.DONE
        if end.returncode == protocol.EXIT_BAD_INPUT:
            self.bad_input = True
            error = protocol.read_status(self.directory).get("error") or "the job failed"
            outcome.close_unfinished_variants(
                self.directory, VariantStatus.FAILED, "not run: " + error
            )
            self._end(RunStatus.FAILED, error)
            return RunStatus.FAILED
        stderr = crash.stderr_since(self.directory, end.log_offset)
        tail = crash.stderr_tail(stderr)
        variant, step = crash.crash_site(self.directory, stderr, end.returncode)
        status, reason = crash.describe_exit(
            end.returncode,
            step=step,
            timed_out=end.timed_out,
            limit_gb=self.memory_limit_gb,
            stderr_tail=tail,
        )
        if variant is not None:
            outcome.mark_variant(
                self.directory, variant, VariantStatus(str(status)), reason, tail, home=self.home
            )
        if variant is None or end.timed_out:
            # Outside a variant (or out of time) nothing more can be saved by a restart.
            outcome.close_unfinished_variants(
                self.directory, VariantStatus(str(status)), f"not run: {reason}"
            )
            self._end(status, reason)
            return status
        event = ProgressEvent("variant", 1.0, f"{variant}: {reason}", variant, time=time.time())
        protocol.append_progress(self.directory, event)
        return None

    def _cancel_reason(self, by_user: str) -> str:
        """Ctrl-C and Cancel are the user's; SIGTERM and SIGHUP come from elsewhere (a CI
        cancel, `timeout`, a closed terminal), which the reason names."""
        if self.interrupted_by in posix.TERMINATION_SIGNALS:
            return f"cancelled by {signal.Signals(self.interrupted_by).name}"
        return by_user

    @staticmethod
    def _kill_group(process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            posix.kill_group(process.pid)
        process.wait()

    def _poll_events(self) -> None:
        if self.on_event is None:  # nobody to tell (a dashboard run): nothing to read
            return
        for event in self._progress.read_new():
            self.on_event(event)

    def _set_status(self, **fields: object) -> None:
        status = {**protocol.read_status(self.directory), **fields}
        rundir.write_json_atomic(self.directory / rundir.STATUS, status)

    def _end(self, status: RunStatus, reason: str) -> None:
        """Finish a run that ended abnormally, logging what it has to MLflow first."""
        track_ended_run(self.directory, status)
        self._finish(status, reason)

    def _finish(self, status: RunStatus, reason: str | None) -> None:
        outcome.finish_run(self.directory, status, reason, home=self.home)


def start_worker(
    directory: Path, memory_limit_gb: float, *, home: Path | None
) -> subprocess.Popen[bytes]:
    """Start `python -m core.jobs.worker run` on the run, in a process group of its own."""
    env = worker_environment(directory, memory_limit_gb, home=home)
    with (directory / rundir.WORKER_LOG).open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "core.jobs.worker", "run", str(directory)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,  # its own process group, killed as a whole
            cwd=str(SOURCE_ROOT),
        )


def worker_environment(
    directory: Path, memory_limit_gb: float, *, home: Path | None
) -> dict[str, str]:
    """The environment a run's worker starts with: this one plus its limits and scratch."""
    env = dict(os.environ)
    env[protocol.MEMORY_LIMIT_ENV] = str(int(memory_limit_gb * 2**30))
    env[protocol.SUPERVISOR_PID_ENV] = str(os.getpid())
    env.setdefault("QUANTLENS_HOME", str(resolved_home(home)))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The host's timing lock, named before TMPDIR moves (posix.TIMING_LOCK reads TMPDIR).
    env.setdefault(posix.TIMING_LOCK_ENV, str(posix.TIMING_LOCK))
    # The converter writes a SavedModel copy to TMPDIR and a native crash leaves it behind;
    # inside the run directory it is removed with the run's other scratch.
    scratch = directory / protocol.WORKER_TMP
    scratch.mkdir(exist_ok=True)
    env["TMPDIR"] = str(scratch)
    return env


def track_ended_run(directory: Path, status: RunStatus) -> None:
    """Log a run the worker could not log itself (it did not finish) to MLflow, if asked.

    MLflow runs in its own short-lived process, never in the supervisor (which the web
    server starts) or the server; a failure becomes a warning in report.json.
    """
    job = rundir.read_json(directory / rundir.JOB)
    if not job.get("mlflow_uri") or not (directory / rundir.REPORT).exists():
        return
    command = [sys.executable, "-m", "core.reporting.tracking", str(directory)]
    with (directory / rundir.WORKER_LOG).open("ab") as log:
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


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m core.jobs.supervisor")
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
    with posix.termination_as_interrupt():  # `kill` of a dashboard run's supervisor cancels it
        status = supervisor.run()
    return 0 if status is RunStatus.DONE else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
