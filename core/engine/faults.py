"""Test-only fault injection: make the worker segfault, abort, hang or exhaust memory at a step.

Enabled only when the environment variable QUANTLENS_FAULT is set, as `KIND@STEP` or
`KIND@STEP:VARIANT`, e.g. `segv@convert:int8`. KIND is segv, abort, hang, oom or slow (the
step takes a second longer, so a test can act while it runs). Nothing in
normal use sets it. QUANTLENS_FAULT_ONCE=PATH makes the fault fire once across processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

FAULT_ENV = "QUANTLENS_FAULT"
# A file path: the fault fires only in the first process that creates this file, so a retried
# task (a Ray shard re-run after its worker died) then succeeds.
FAULT_ONCE_ENV = "QUANTLENS_FAULT_ONCE"


def maybe_inject(step: str, variant: str | None = None) -> None:
    """Trigger the configured fault if it targets this step (and variant)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    kind, _, where = spec.partition("@")
    target_step, _, target_variant = where.partition(":")
    if target_step != step or (target_variant and target_variant != variant):
        return
    once = os.environ.get(FAULT_ONCE_ENV)
    if once and not _first_time(once):
        return
    if kind == "segv":
        # A real segfault hits the faulting thread; os.kill would hit an arbitrary one.
        signal.pthread_kill(threading.get_ident(), signal.SIGSEGV)
    elif kind == "abort":
        os.abort()
    elif kind == "hang":
        # A child in the worker's process group, as a graph op that starts a process would
        # make: a timeout must end it too. Its pid goes to stderr so a test can check.
        child = subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL)
        sys.stderr.write(f"fault: hanging with child process {child.pid}\n")
        sys.stderr.flush()
        while True:
            time.sleep(3600)
    elif kind == "slow":
        # Logged so a test can tell which process (Ray: which node) has run the step.
        sys.stderr.write(f"fault: slow {step}\n")
        sys.stderr.flush()
        time.sleep(1.0)
    elif kind == "oom":
        hoard = []
        while True:  # grows until the memory limit stops it
            hoard.append(bytearray(256 * 2**20))


def _first_time(marker: str) -> bool:
    """Create `marker` exclusively; False when another process (or an earlier try) did."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True
