"""SIGTERM and SIGHUP to `python -m core run` end the run as Ctrl-C does, and a worker never
outlives its supervisor: real CLI processes, a real `timeout`, /proc and the SQLite store."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from core import posix

REPO = Path(__file__).resolve().parents[2]
# Long enough for the worker to start (the CLI starts it before any model work), and the
# fault makes the worker hang, so the run is still going whenever the signal comes.
TIMEOUT_S = 15

pytestmark = pytest.mark.slow


def _command(model: Path, data: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "core", "run", str(model), "--data", str(data),
        "--modes", "float16", "--out", str(out),
    ]  # fmt: skip


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "QUANTLENS_HOME": str(home), "QUANTLENS_FAULT": "hang@convert"}


def _processes_of(directory: Path) -> list[int]:
    """Every live process whose command line names the run folder (its worker, say)."""
    needle = str(directory).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and posix.pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def _kill_leftovers(out: Path) -> None:
    """Old code leaves a hung worker (and its `sleep` child) behind: never let it outlive the test."""
    status = _json(out / "status.json")
    for pid in [status.get("worker_pid"), *_processes_of(out)]:
        if isinstance(pid, int):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _json(path: Path) -> dict[str, object]:
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def _wait_for(condition: Callable[[], bool], what: str, limit_s: float = 300) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


def _stored(home: Path, run_id: str) -> tuple[str, str]:
    """The run's status and name as the SQLite history holds them (read without our store)."""
    with contextlib.closing(sqlite3.connect(home / "quantlens.db")) as conn:
        row = conn.execute("SELECT status, name FROM runs WHERE id = ?", (run_id,)).fetchone()
    assert row is not None, f"run {run_id} is not in the history"
    return str(row[0]), str(row[1])


def _converting(out: Path) -> bool:
    try:
        return b'"convert"' in (out / "progress.jsonl").read_bytes()
    except OSError:
        return False


def test_timeout_term_cancels_the_run_and_leaves_no_worker(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    try:
        done = subprocess.run(
            ["timeout", "-s", "TERM", str(TIMEOUT_S), *_command(tiny_models["keras"], tiny_data, out)],
            cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=600,
            check=False,
        )  # fmt: skip
        status = _json(out / "status.json")
        assert isinstance(status.get("worker_pid"), int), (
            f"the worker had not started within {TIMEOUT_S} s; the test proves nothing: "
            + done.stderr[-2000:]
        )
        assert done.returncode == 124, done.stderr[-3000:]  # timeout's own "it timed out"
        assert done.stderr.strip().splitlines()[-1] == "error: cancelled by SIGTERM"
        assert _processes_of(out) == []
        assert not posix.pid_alive(int(status["worker_pid"]))  # type: ignore[call-overload]
        assert status["status"] == "cancelled"
        assert status["error"] == "cancelled by SIGTERM"
        stored_status, _ = _stored(tmp_path, str(status["run_id"]))
        assert stored_status == "cancelled"
        report = _json(out / "report.json")  # written once the worker has loaded the model
        assert not report or report["run"]["status"] == "cancelled"  # type: ignore[index]
    finally:
        _kill_leftovers(out)


def test_sighup_cancels_the_run_and_exits_129(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    """A closed terminal: the CLI's own exit status is 128 + SIGHUP."""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _command(tiny_models["keras"], tiny_data, out), cwd=REPO, env=_env(tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for(lambda: _converting(out), "the worker to reach its conversion")
        worker = _json(out / "status.json")["worker_pid"]
        proc.send_signal(signal.SIGHUP)
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 129, stderr[-3000:]
        assert stderr.strip().splitlines()[-1] == "error: cancelled by SIGHUP"
        assert _processes_of(out) == []
        assert not posix.pid_alive(worker)  # type: ignore[arg-type]
        status = _json(out / "status.json")
        assert status["status"] == "cancelled"
        assert _stored(tmp_path, str(status["run_id"]))[0] == "cancelled"
    finally:
        proc.kill()
        proc.wait()
        _kill_leftovers(out)


def test_a_worker_dies_with_its_supervisor_even_on_sigkill(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    """SIGKILL cannot be handled: the kernel (PR_SET_PDEATHSIG) ends the worker instead."""
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _command(tiny_models["keras"], tiny_data, out), cwd=REPO, env=_env(tmp_path),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_for(lambda: _converting(out), "the worker to reach its conversion")
        worker = _json(out / "status.json")["worker_pid"]
        assert isinstance(worker, int) and posix.pid_alive(worker)
        proc.kill()
        proc.wait()
        # Not a time limit on the kernel: how long to wait before calling the worker orphaned.
        _wait_for(lambda: not posix.pid_alive(worker), "the worker to die with its supervisor", 60)
        assert _processes_of(out) == []
    finally:
        proc.kill()
        proc.wait()
        _kill_leftovers(out)
