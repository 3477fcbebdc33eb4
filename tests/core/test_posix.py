"""The POSIX-only calls, on the real kernel: group kill, memory cap, pid/zombie checks, CPU name.

Each /proc-based answer is also checked with /proc taken away, as on macOS.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from core import posix

REPO = Path(__file__).resolve().parents[2]


def _state(pid: int) -> str | None:
    """The kernel's state letter for `pid` (read here, not through core.posix), None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()[0]


def _wait_for(predicate, timeout: float = 10.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _zombie() -> subprocess.Popen[bytes]:
    """A child that has exited and that nobody has reaped yet."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    assert _wait_for(lambda: _state(child.pid) == "Z")
    return child


@pytest.fixture(params=["proc", "no-proc"])
def proc(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Run the test with /proc (Linux) and without it (what macOS has)."""
    if request.param == "no-proc":
        monkeypatch.setattr(posix, "PROC", tmp_path / "no-proc")
    return str(request.param)


def test_pid_alive_tells_running_reaped_and_zombie_processes_apart(proc: str) -> None:
    assert posix.pid_alive(os.getpid())
    assert not posix.pid_alive(None) and not posix.pid_alive(0)
    zombie = _zombie()
    try:
        assert not posix.pid_alive(zombie.pid)  # exited: kill(0) still answers for it
    finally:
        zombie.wait()
    assert not posix.pid_alive(zombie.pid)  # reaped: gone
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        assert posix.pid_alive(sleeper.pid)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_pid_now_held_by_another_process_or_thread_is_not_the_recorded_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A freed pid goes to the next process or thread: only the recorded (pid, start) pair names
    the process. A thread of this process stands in for the stranger: Linux numbers threads from
    the same pool, and kill(tid, 0) answers for it."""
    me = os.getpid()
    started = posix.process_started(me)
    assert started == int(Path(f"/proc/{me}/stat").read_text().rpartition(")")[2].split()[19])
    assert posix.same_process_alive(me, started)
    assert not posix.same_process_alive(me, started + 1)  # another process once had this pid
    assert posix.same_process_alive(me, None)  # nothing recorded: the pid alone decides
    assert not posix.same_process_alive(None, started)

    ready, done = threading.Event(), threading.Event()
    tid: list[int] = []

    def hold() -> None:
        time.sleep(0.05)  # a clock tick (10 ms) or more after the test process started
        tid.append(threading.get_native_id())
        ready.set()
        done.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert ready.wait(30)
        assert tid[0] != me and posix.pid_alive(tid[0])  # the pid answers ...
        assert not posix.same_process_alive(tid[0], started)  # ... but it is not the process
    finally:
        done.set()
        thread.join()

    monkeypatch.setattr(posix, "PROC", tmp_path / "no-proc")  # macOS: no start to compare
    assert posix.process_started(me) is None
    assert posix.same_process_alive(me, started + 1)


def test_kill_group_ends_the_worker_and_what_it_started() -> None:
    script = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen(['sleep', '60'])\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    leader = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True
    )
    assert leader.stdout is not None
    grandchild = int(leader.stdout.readline())
    assert _state(grandchild) not in (None, "Z")
    posix.kill_group(leader.pid)
    leader.wait(timeout=10)
    assert leader.returncode == -9
    # the orphaned grandchild died too (gone, or a zombie waiting for init to reap it)
    assert _wait_for(lambda: _state(grandchild) in (None, "Z"))
    posix.kill_group(leader.pid)  # a group that is gone is not an error


def test_the_memory_limit_stops_an_allocation_above_it() -> None:
    script = (
        "from core.posix import limit_address_space\n"
        "assert limit_address_space(1 << 30)\n"
        "hoard = bytearray(2 << 30)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and "MemoryError" in done.stderr


@pytest.mark.skipif(shutil.which("lscpu") is None, reason="lscpu is not installed")
def test_cpu_name_is_the_model_name_the_system_reports(proc: str) -> None:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    model = next(ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln)
    name = posix.cpu_name()
    if proc == "proc":
        assert name == model
    else:  # no /proc and not macOS: what the platform module knows, never empty
        assert name and "\n" not in name


_HOLDER = """
import sys, time
from pathlib import Path
from core import posix
with posix.host_lock(Path(sys.argv[1]), on_wait=lambda: print("waiting", flush=True)):
    print("acquired", time.time(), flush=True)
    time.sleep(float(sys.argv[2]))
    print("released", time.time(), flush=True)
"""


def _holder(lock: Path, hold_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(lock), str(hold_s)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_host_lock_makes_a_second_process_wait_and_say_so(tmp_path: Path) -> None:
    lock = tmp_path / "timing.lock"
    first = _holder(lock, 1.5)
    assert first.stdout is not None
    assert first.stdout.readline().startswith("acquired")  # the first holds it now
    second = _holder(lock, 0.0)
    out_second, _ = second.communicate(timeout=60)
    out_first, _ = first.communicate(timeout=60)
    lines = out_second.splitlines()
    assert lines[0] == "waiting"
    released = float(out_first.split()[-1])
    acquired = float(lines[1].split()[1])
    assert acquired >= released  # never both timing at once


def test_host_lock_taken_freely_says_nothing(tmp_path: Path) -> None:
    out, _ = _holder(tmp_path / "timing.lock", 0.0).communicate(timeout=60)
    assert out.splitlines()[0].startswith("acquired")


def test_a_killed_holder_does_not_block_the_next_job(tmp_path: Path) -> None:
    lock = tmp_path / "timing.lock"
    first = _holder(lock, 60.0)
    assert first.stdout is not None and first.stdout.readline().startswith("acquired")
    first.kill()
    first.wait(timeout=30)
    out, _ = _holder(lock, 0.0).communicate(timeout=60)
    assert out.splitlines()[0].startswith("acquired")


def test_a_worker_locks_the_hosts_timing_file_not_one_in_its_scratch(tmp_path: Path) -> None:
    """A worker's TMPDIR is its run folder's scratch; the lock two runs share must not move
    with it, or two runs would time their models on the same cores at once."""
    from core.jobs.supervisor import worker_environment

    env = worker_environment(tmp_path, 1.0, home=tmp_path)
    assert env["TMPDIR"].startswith(str(tmp_path))
    seen = subprocess.run(
        [sys.executable, "-c", "from core import posix; print(posix.TIMING_LOCK)"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    ).stdout.strip()
    assert seen == str(posix.TIMING_LOCK)
    assert not seen.startswith(str(tmp_path))
