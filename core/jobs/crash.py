"""Read how a worker ended: which variant and step it was in, and the one-line outcome to show.

A worker converts on a second thread while its main thread evaluates the previous variant, so
a crash is blamed on the conversion only when the conversion's thread is the one that faulted:
the worker's conversion marker names that thread, and faulthandler's dump names the faulting
one by the same id. No function name is looked for, so renaming engine code cannot misplace a
crash.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from core.inputs import rundir
from core.runfolder import protocol
from core.types import RunStatus, VariantStatus

STDERR_TAIL_LINES = 12
STDERR_READ_BYTES = 256 * 1024
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
    "evaluate": "evaluation on the Ray cluster",
    "diagnose": "per-layer diagnosis",
    "auto-fix": "the auto-fix search",
    "latency": "latency timing",
    "runtimes": "the runtime matrix",
    "deploy": "the deployability pre-flight",
    "perturb": "the flip hunt",
}
# faulthandler's header for the thread that received the fatal signal (ident in hex).
_FAULTING_THREAD = re.compile(r"^Current thread (0x[0-9a-fA-F]+)", re.MULTILINE)


def log_size(directory: Path) -> int:
    """How far worker.log goes now: a new worker's stderr starts there."""
    try:
        return (directory / rundir.WORKER_LOG).stat().st_size
    except OSError:
        return 0


def stderr_since(directory: Path, offset: int) -> str:
    """What the worker wrote to stderr since `offset` (its last 256 KB at most)."""
    try:
        with (directory / rundir.WORKER_LOG).open("rb") as f:
            f.seek(max(offset, f.seek(0, os.SEEK_END) - STDERR_READ_BYTES))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def stderr_tail(text: str) -> str:
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


def faulting_thread(stderr: str) -> int | None:
    """The id of the thread faulthandler saw receive the fatal signal (the last dump's), if any."""
    found = _FAULTING_THREAD.findall(stderr)
    return int(found[-1], 16) if found else None


def crash_site(directory: Path, stderr: str, returncode: int) -> tuple[str | None, str | None]:
    """(variant, step) a dead worker was in: the conversion thread's, or the main thread's.

    Running out of memory while a conversion is in flight is blamed on the conversion: it
    is by far the most memory-hungry step, and the main thread often only trips over the
    exhausted limit.
    """
    converting = protocol.read_converting(directory)
    out_of_memory = returncode == protocol.EXIT_OOM or "MemoryError" in stderr
    on_its_thread = converting is not None and faulting_thread(stderr) == converting.thread
    if converting is not None and (on_its_thread or out_of_memory):
        return converting.variant, "convert"
    variant = _running_variant(directory)
    # Conversion events of other variants come from the conversion thread; the main
    # thread's step is the last event that is not one of those.
    for event in reversed(protocol.read_progress(directory)):
        if event.step != "convert" or event.variant == variant:
            return variant, event.step
    return variant, None


def _running_variant(directory: Path) -> str | None:
    path = directory / rundir.REPORT
    if not path.exists():
        return None
    report = rundir.read_json(path)
    return next(
        (v["name"] for v in report["variants"] if v["status"] == VariantStatus.RUNNING), None
    )


def describe_exit(
    returncode: int, *, step: str | None, timed_out: bool, limit_gb: float, stderr_tail: str
) -> tuple[RunStatus, str]:
    """Map how a worker ended to an outcome and its one-line reason (the stderr tail is kept apart)."""
    where = f" during {STEP_WORDS.get(step or '', step or 'start-up')}"
    if timed_out:
        return RunStatus.TIMEOUT, f"timeout: stopped after the time limit{where}"
    out_of_memory = (
        returncode == protocol.EXIT_OOM
        or "MemoryError" in stderr_tail
        or "bad_alloc" in stderr_tail
    )
    if out_of_memory:
        return RunStatus.FAILED, f"out of memory (limit {limit_gb:g} GB){where}"
    if returncode < 0:
        name = SIGNAL_NAMES.get(signal.Signals(-returncode), signal.Signals(-returncode).name)
        return RunStatus.CRASHED, f"crashed ({name}){where}"
    return RunStatus.CRASHED, f"worker exited with status {returncode}{where}"
