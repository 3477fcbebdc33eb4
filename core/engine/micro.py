"""TFLite-Micro's verdict on a `.tflite`: does its interpreter plan the model, and with how big
an arena. Run in a child process (`python -m core.engine.micro MODEL`): the interpreter is C++
that can abort on a model it does not expect, and it reports on the C stderr, not to Python."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from core.reporting.sections.deployability import CellStatus, MicroCell

# The pinned pre-release (requirements-extras.txt): TFLite-Micro publishes no stable release.
INSTALL_HINT = (
    "TFLite-Micro is not installed: pip install --pre tflite-micro "
    "(an optional extra in requirements-extras.txt)"
)
# The arena handed to the interpreter for planning: larger than any model QuantLens runs on a
# microcontroller needs; the arena reported is what the plan used, not this.
PLANNING_ARENA_BYTES = 64 * 1024 * 1024
_TIMEOUT_S = 120

_TOTAL = re.compile(r"Arena allocation total (\d+) bytes")
_MISSING = re.compile(r"Didn't find op for builtin opcode '([A-Z0-9_]+)'")
_CUSTOM_MISSING = re.compile(r"Didn't find op for custom opcode '([^']+)'")


def installed() -> bool:
    """Whether the optional TFLite-Micro Python runtime is importable."""
    return importlib.util.find_spec("tflite_micro") is not None


def version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("tflite-micro")
    except metadata.PackageNotFoundError:
        return None


def micro_check(model: Path) -> MicroCell:
    """TFLite-Micro's verdict on the model at `model`, in a child process.

    Returns:
        OK with the arena in bytes; FAILS with the first missing op or the kernel's complaint;
        MISSING_EXTRA with how to install it; ERROR when the child died.
    """
    if not installed():
        return MicroCell(CellStatus.MISSING_EXTRA, reason=INSTALL_HINT)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "core.engine.micro", str(model)],
            capture_output=True,
            text=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return MicroCell(
            CellStatus.ERROR, reason=f"TFLite-Micro took over {_TIMEOUT_S} s to plan the model"
        )
    return cell_from_output(done.returncode, done.stdout, done.stderr, version())


def cell_from_output(returncode: int, stdout: str, stderr: str, release: str | None) -> MicroCell:
    """The cell the child's exit code and output say (what `_plan` printed, TFLite-Micro's
    messages on stderr)."""
    if returncode == 0:
        found = _TOTAL.search(stdout)
        if found:
            return MicroCell(CellStatus.OK, arena_bytes=int(found.group(1)), version=release)
        return MicroCell(CellStatus.ERROR, reason="TFLite-Micro reported no arena", version=release)
    missing = _MISSING.search(stderr) or _CUSTOM_MISSING.search(stderr)
    if missing:
        op = missing.group(1)
        return MicroCell(
            CellStatus.FAILS,
            missing_op=op,
            reason=f"TFLite-Micro has no kernel for {op} (it names only the first missing op)",
            version=release,
        )
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and "Traceback" not in ln]
    complaint = next((ln for ln in lines if "failed to prepare" in ln), None)
    if returncode == 3 and lines:  # the interpreter refused the model (see _plan)
        detail = complaint or lines[0]
        return MicroCell(
            CellStatus.FAILS, reason=f"TFLite-Micro cannot plan it ({detail})", version=release
        )
    last = lines[-1] if lines else f"exit code {returncode}"
    return MicroCell(CellStatus.ERROR, reason=f"TFLite-Micro failed: {last}", version=release)


def _plan(model: Path) -> int:
    """Load `model` into the TFLite-Micro interpreter and print its arena plan on stdout.

    Exit 0: planned (the allocation lines follow); 3: the interpreter refused the model (its
    reason is on stderr).
    """
    from tflite_micro.python.tflite_micro import runtime

    try:
        interpreter = runtime.Interpreter.from_bytes(
            model.read_bytes(), arena_size=PLANNING_ARENA_BYTES
        )
    except RuntimeError as exc:
        sys.stderr.write(f"{exc}\n")
        return 3
    # print_allocations writes to the C stderr: send fd 2 to a file for the call, then back.
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            interpreter.print_allocations()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        sys.stdout.write(captured.read().decode("utf-8", "replace"))
    return 0


if __name__ == "__main__":
    sys.exit(_plan(Path(sys.argv[1])))
