"""Arm Ethos-U mapping of a `.tflite` with Vela (`ethos-u-vela`, an optional extra): ops on the
NPU vs the CPU, SRAM and flash use and estimated cycles, read from Vela's own summary.

Vela runs as a child process (`python -m ethosu.vela`), in a scratch folder, so its files
never land in the run folder.
"""

from __future__ import annotations

import csv
import importlib.util
import math
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from core.engine.flatbuffer import operators
from core.reporting.sections.deployability import CellStatus, VelaCell
from core.reporting.targets import ACCELERATOR

INSTALL_HINT = (
    "Vela is not installed: pip install ethos-u-vela (an optional extra in requirements-extras.txt)"
)
_TIMEOUT_S = 300

_COUNT = re.compile(r"^(CPU|NPU) operators = (\d+)", re.MULTILINE)
# "   CPU: Passthrough = <output tensor name> (outputs [1, 10])": Vela names the op by its own
# lowered type; the output tensor's name finds the model's op type.
_CPU_OP = re.compile(r"^\s*CPU: (\S+) = (.+?) \(outputs ", re.MULTILINE)
_SYSTEM = re.compile(r"^System configuration\s+(\S+)", re.MULTILINE)


def installed() -> bool:
    """Whether the optional Vela compiler is importable."""
    return importlib.util.find_spec("ethosu") is not None


def version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("ethos-u-vela")
    except metadata.PackageNotFoundError:
        return None


def vela_check(model: Path) -> VelaCell:
    """Compile `model` with Vela for an Ethos-U55-128 (Vela's default system configuration)."""
    if not installed():
        return VelaCell(CellStatus.MISSING_EXTRA, accelerator=ACCELERATOR, reason=INSTALL_HINT)
    with tempfile.TemporaryDirectory(prefix="quantlens-vela-") as scratch:
        out = Path(scratch)
        try:
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "ethosu.vela",
                    str(model),
                    "--accelerator-config",
                    ACCELERATOR,
                    "--output-dir",
                    str(out),
                    "--show-cpu-operations",
                ],
                capture_output=True,
                text=True,
                timeout=_TIMEOUT_S,
                check=False,
                cwd=out,
            )
        except subprocess.TimeoutExpired:
            return VelaCell(
                CellStatus.ERROR,
                accelerator=ACCELERATOR,
                reason=f"Vela took over {_TIMEOUT_S} s",
            )
        summaries = sorted(out.glob("*_summary_*.csv"))
        summary = _read_summary(summaries[0]) if summaries else None
        return cell_from_output(
            done.returncode,
            done.stdout + done.stderr,
            summary,
            version(),
            ops=operators(model.read_bytes()),
        )


def _read_summary(path: Path) -> dict[str, str]:
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return rows[0] if rows else {}


def cell_from_output(
    returncode: int,
    text: str,
    summary: dict[str, str] | None,
    release: str | None,
    *,
    ops: list[tuple[str, tuple[str, ...]]],
) -> VelaCell:
    """The cell Vela's printed summary and its CSV say.

    Ops are counted as the model's own (`ops`: each op's type and output tensor names): an op
    is on the CPU when Vela's CPU list names one of its outputs. Vela's own totals count the
    ops it lowered to (a SOFTMAX becomes about a dozen) and change with its debug flags (40 or
    50 for one compile of the same model), so they are not what a user can check against
    the graph. The CSV's memory figures are KiB; they are stored in bytes.
    """
    counts = {kind: int(n) for kind, n in _COUNT.findall(text)}
    if returncode != 0 or not summary or "NPU" not in counts or not ops:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"exit code {returncode}"
        return VelaCell(
            CellStatus.ERROR,
            accelerator=ACCELERATOR,
            reason=f"Vela could not compile it: {last}",
            version=release,
        )

    def kib(key: str) -> int | None:
        value = summary.get(key)
        return None if value in (None, "") else round(float(value) * 1024)

    cpu_lines = _CPU_OP.findall(text)
    on_cpu_tensors = {tensor for _, tensor in cpu_lines}
    on_cpu = [op for op, outputs in ops if on_cpu_tensors.intersection(outputs)]
    npu_ops = len(ops) - len(on_cpu)
    # A CPU op Vela names by no tensor of the model (one it inserted) still runs on the CPU.
    known = {tensor for _, outputs in ops for tensor in outputs}
    on_cpu += [kind for kind, tensor in cpu_lines if tensor not in known]

    def estimate(key: str) -> float | None:
        # With nothing on the NPU Vela estimates nothing (0 cycles, NaN inferences per second).
        value = summary.get(key)
        if not npu_ops or value in (None, ""):
            return None
        number = float(value)
        return number if math.isfinite(number) and number > 0 else None

    cycles = estimate("cycles_total")
    system = _SYSTEM.search(text)
    return VelaCell(
        CellStatus.OK,
        accelerator=ACCELERATOR,
        system_config=system.group(1) if system else summary.get("system_config"),
        npu_ops=npu_ops,
        cpu_ops=len(on_cpu),
        cpu_op_types=tuple(sorted(set(on_cpu))),
        sram_bytes=kib("sram_memory_used"),
        flash_bytes=(kib("off_chip_flash_memory_used") or 0)
        + (kib("on_chip_flash_memory_used") or 0),
        cycles=None if cycles is None else round(cycles),
        inferences_per_second=estimate("inferences_per_second"),
        version=release,
    )
