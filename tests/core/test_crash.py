"""core.jobs.crash: a dead worker's crash is blamed on the right variant and step.

The dumps here are real: a child process enables faulthandler, marks a conversion through
core.runfolder.protocol on a second thread, and segfaults on one of its two threads. The converting
function's name is deliberately not the engine's: the blame must follow the marker's thread.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from core.inputs import rundir
from core.jobs.crash import crash_site, describe_exit, faulting_thread, stderr_tail
from core.runfolder import protocol
from core.types import ProgressEvent, RunStatus

REPO = Path(__file__).resolve().parents[2]

# A worker in miniature: a conversion thread marks "int8" and the main thread is evaluating
# "float16"; then one of the two threads (argv[2]) receives SIGSEGV.
_CRASHING_WORKER = """
import faulthandler, signal, sys, threading, time
from pathlib import Path
from core.runfolder import protocol

faulthandler.enable()
run_dir, crash_on = Path(sys.argv[1]), sys.argv[2]
marked = threading.Event()

def make_the_tflite_somehow():
    protocol.mark_converting(run_dir, "int8")
    marked.set()
    if crash_on == "conversion":
        signal.pthread_kill(threading.get_ident(), signal.SIGSEGV)
    time.sleep(60)

threading.Thread(target=make_the_tflite_somehow, daemon=True).start()
marked.wait()
if crash_on == "main":
    signal.pthread_kill(threading.get_ident(), signal.SIGSEGV)
time.sleep(60)
"""


def _run_dir_evaluating_float16(tmp_path: Path) -> Path:
    """A run folder whose main thread runs float16 while int8 converts (as progress says)."""
    report = {
        "variants": [
            {"name": "float16", "status": "running"},
            {"name": "int8", "status": "pending"},
        ]
    }
    rundir.write_json_atomic(tmp_path / rundir.REPORT, report)
    for event in (
        ProgressEvent("convert", 1.0, "converted float16", "float16", time=1.0),
        ProgressEvent("infer", 0.5, "running float16", "float16", time=2.0),
        ProgressEvent("convert", 0.0, "converting to int8", "int8", time=3.0),
    ):
        protocol.append_progress(tmp_path, event)
    return tmp_path


def _crash(run_dir: Path, on: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-c", _CRASHING_WORKER, str(run_dir), on],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == -11, done.stderr[-2000:]  # SIGSEGV
    return done


def test_a_crash_on_the_conversion_thread_is_blamed_on_the_marked_variant(tmp_path: Path) -> None:
    run_dir = _run_dir_evaluating_float16(tmp_path)
    done = _crash(run_dir, "conversion")
    assert "make_the_tflite_somehow" in done.stderr  # not the engine's function name
    assert "convert_in_background" not in done.stderr
    variant, step = crash_site(run_dir, done.stderr, done.returncode)
    assert (variant, step) == ("int8", "convert")
    status, reason = describe_exit(
        done.returncode, step=step, timed_out=False, limit_gb=16, stderr_tail=done.stderr
    )
    assert (status, reason) == (RunStatus.CRASHED, "crashed (SIGSEGV) during conversion")


def test_a_crash_on_the_main_thread_during_a_conversion_is_blamed_on_the_running_variant(
    tmp_path: Path,
) -> None:
    run_dir = _run_dir_evaluating_float16(tmp_path)
    done = _crash(run_dir, "main")
    assert protocol.read_converting(run_dir) is not None  # int8 was still converting
    assert crash_site(run_dir, done.stderr, done.returncode) == ("float16", "infer")


def test_the_faulting_thread_is_the_one_the_marker_names(tmp_path: Path) -> None:
    done = _crash(_run_dir_evaluating_float16(tmp_path), "conversion")
    marker = protocol.read_converting(tmp_path)
    assert marker is not None and marker.variant == "int8"
    assert faulting_thread(done.stderr) == marker.thread
    # The tail shown with the variant keeps the fatal line and the faulting thread's frames.
    tail = stderr_tail(done.stderr).splitlines()
    assert tail[0] == "Fatal Python error: Segmentation fault"
    assert any("make_the_tflite_somehow" in line for line in tail)


def test_without_a_dump_only_running_out_of_memory_blames_the_conversion(tmp_path: Path) -> None:
    run_dir = _run_dir_evaluating_float16(tmp_path)
    rundir.write_json_atomic(run_dir / protocol.CONVERTING, {"variant": "int8", "thread": 1})
    # Killed from outside (SIGKILL): no dump names a thread, so the running variant is blamed.
    assert crash_site(run_dir, "", -9) == ("float16", "infer")
    # Out of memory with a conversion in flight: the conversion, the big memory user.
    assert crash_site(run_dir, "", protocol.EXIT_OOM) == ("int8", "convert")
    assert crash_site(run_dir, "MemoryError: out of memory", 1) == ("int8", "convert")


@pytest.mark.parametrize(
    "text", ["", "int8", '{"variant": "int8"}', '{"thread": 5}', '{"variant": "a", "thread": "x"}']
)
def test_a_marker_that_is_not_whole_names_no_conversion(tmp_path: Path, text: str) -> None:
    (tmp_path / protocol.CONVERTING).write_text(text)
    assert protocol.read_converting(tmp_path) is None


def test_the_marker_names_the_calling_thread_and_is_cleared(tmp_path: Path) -> None:
    import threading

    protocol.mark_converting(tmp_path, "float16")
    saved = json.loads((tmp_path / protocol.CONVERTING).read_text())
    assert saved == {"variant": "float16", "thread": threading.get_ident()}
    protocol.clear_converting(tmp_path)
    protocol.clear_converting(tmp_path)  # twice is fine: a refused conversion clears it too
    assert protocol.read_converting(tmp_path) is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("step", "words"),
    [("diagnose", "per-layer diagnosis"), ("auto-fix", "the auto-fix search")],
)
def test_a_crash_in_the_diagnose_stage_is_named_in_words(step: str, words: str) -> None:
    """The diagnose stage's steps read as words in the one-line reason, like the others."""
    status, reason = describe_exit(-11, step=step, timed_out=False, limit_gb=16, stderr_tail="")
    assert (status, reason) == (RunStatus.CRASHED, f"crashed (SIGSEGV) during {words}")
