"""The operating-system calls QuantLens needs that only POSIX systems have, in one place.

Supported: Linux (tested). macOS has every call used here except /proc, for which each
function below has a fallback (`ps`, `sysctl`); there the kernel accepts the address-space
limit but does not enforce it. Windows has no process groups or rlimits: use WSL2.

Subprocesses are started with `start_new_session=True` (a new process group, so a timeout or a
cancel kills everything a model's graph ops may have started); Popen ignores it on Windows.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

PROC = Path("/proc")  # a module attribute so tests can take /proc away, as on macOS
# One lock file for the whole host, in the system temp folder every user and workspace shares.
# A worker's TMPDIR is its run folder's scratch, so its supervisor hands it the host's path
# through this variable: otherwise every worker would lock a file of its own.
TIMING_LOCK_ENV = "QUANTLENS_TIMING_LOCK"
TIMING_LOCK = Path(
    os.environ.get(TIMING_LOCK_ENV) or Path(tempfile.gettempdir()) / "quantlens-timing.lock"
)
# Signals that ask a command-line process to stop (`timeout`, CI cancel, `docker stop`, a
# closed terminal); handled as Ctrl-C is. The exit status says which: 128 + the signal.
TERMINATION_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_S = 0.5  # the parent watch where the kernel cannot do it (not Linux)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C raises KeyboardInterrupt, so both end alike."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupt_signal(exc: KeyboardInterrupt) -> int:
    """The signal behind an interrupt: SIGTERM/SIGHUP for Terminated, else SIGINT (Ctrl-C)."""
    return exc.signum if isinstance(exc, Terminated) else int(signal.SIGINT)


@contextlib.contextmanager
def termination_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise Terminated (a KeyboardInterrupt).

    Only the first one raises: a second signal must not cut short the cleanup the first one
    started (stopping the worker, finishing the run as cancelled). Signal handlers can only
    be set on the main thread; elsewhere the block runs with the handlers it has.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum: int, frame: object) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise Terminated(signum)

    previous = {sig: signal.signal(sig, handler) for sig in TERMINATION_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def die_with_parent(parent_pid: int) -> None:
    """End this process (and its process group) when its parent `parent_pid` ends.

    A worker must never outlive its supervisor, however the supervisor dies (SIGKILL
    included): on Linux the kernel sends SIGKILL (PR_SET_PDEATHSIG); elsewhere a thread
    watches the parent pid and kills this process's group when it changes.
    """
    if sys.platform.startswith("linux") and _set_parent_death_signal(signal.SIGKILL):
        if os.getppid() != parent_pid:  # the parent died before the kernel was told to watch
            os.kill(os.getpid(), signal.SIGKILL)
        return
    threading.Thread(
        target=_watch_parent, args=(parent_pid,), name="parent-watch", daemon=True
    ).start()


def _set_parent_death_signal(signum: int) -> bool:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(signum), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    # The worker leads its own group (start_new_session): whatever it started ends with it.
    with contextlib.suppress(OSError):
        os.killpg(os.getpgid(0), signal.SIGKILL)
    os._exit(1)


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by `pid` (a worker started with start_new_session=True).

    Children the worker started (a graph op may start processes) die with it. A group that is
    already gone is not an error.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def limit_address_space(limit_bytes: int) -> bool:
    """Cap this process's address space, so a runaway model fails here and not on the machine.

    Returns:
        True when the limit was set; False when the system refuses it (the run goes on
        without a memory cap rather than not at all).
    """
    import resource

    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    except (ValueError, OSError):
        return False
    return True


def _is_zombie(pid: int) -> bool:
    """Whether `pid` has exited but not been reaped yet (it still answers kill(pid, 0))."""
    if PROC.is_dir():
        fields = stat_fields(pid)
        return bool(fields) and fields[0] == "Z"  # field 3, the state letter
    try:
        done = subprocess.run(
            ["ps", "-o", "stat=", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.stdout.strip().startswith("Z")


def pid_alive(pid: int | None) -> bool:
    """Whether process `pid` is running: it exists, and it is not a zombie.

    A process owned by another user counts as alive (kill answers EPERM).
    """
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def process_started(pid: int) -> int | None:
    """When process `pid` started, in clock ticks since boot (/proc/<pid>/stat, field 22).

    None where there is no /proc or the pid is gone. Linux gives a freed pid to the next
    process or thread (ids wrap at /proc/sys/kernel/pid_max, 32768 on many hosts, and a busy
    machine's threads use them up in minutes): a pid and its start together name one process.
    """
    fields = stat_fields(pid)
    try:
        return int(fields[19])  # field 22: the list starts at field 3
    except (IndexError, ValueError):
        return None


def stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat from field 3 (the state) on; empty when it cannot be read.

    The command name before it is in parentheses and may hold spaces or parentheses itself:
    the fields are split after the last ")".
    """
    try:
        return (PROC / str(pid) / "stat").read_text(encoding="utf-8").rpartition(")")[2].split()
    except OSError:
        return []


def same_process_alive(pid: int | None, started: int | None) -> bool:
    """Whether `pid` runs and is still the process whose start was recorded as `started`.

    Without a recorded start (a status file written before starts were kept), or without
    /proc to read one, this is `pid_alive`.
    """
    if pid is None or not pid_alive(pid):
        return False
    if started is None or not PROC.is_dir():
        return True
    return process_started(pid) == started


def cpu_name() -> str:
    """The CPU model name: /proc/cpuinfo on Linux, sysctl on macOS, else what platform says."""
    with contextlib.suppress(OSError), (PROC / "cpuinfo").open(encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    if sys.platform == "darwin":
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            done = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"],
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
            if done.stdout.strip():
                return done.stdout.strip()
    return platform.processor() or platform.machine()


@contextlib.contextmanager
def host_lock(path: Path, on_wait: Callable[[], None]) -> Iterator[None]:
    """Hold an exclusive `flock` on `path` for the block; wait for it if another process has it.

    `on_wait` is called once, before blocking, only when the lock is taken, so the caller can
    say why it stands still. The kernel drops the lock when the holder exits, even on SIGKILL:
    a crashed job never leaves the next one waiting forever.
    """
    import fcntl

    handle: IO[bytes]
    try:
        handle = path.open("a+b")
    except PermissionError:  # another user's lock file: flock works on a read-only handle too
        handle = path.open("rb")
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
