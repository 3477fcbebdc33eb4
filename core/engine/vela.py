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

from core.reporting.runmodel import CellStatus, VelaCell

ACCELERATOR = "ethos-u55-128"
INSTALL_HINT = (
    "Vela is not installed: pip install ethos-u-vela (an optional extra in requirements-extras.txt)"
)
FLOAT_MODEL = (
    "no op computes in integers (a float or dynamic-range model): the Ethos-U NPU runs only "
    "int8 and int16 ops, so Vela would leave every op to the CPU"
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


def vela_check(model: Path, *, has_integer_ops: bool) -> VelaCell:
    """Compile `model` with Vela for an Ethos-U55-128 (Vela's default system configuration).

    Args:
        model: the variant's `.tflite`.
        has_integer_ops: False for a model with no quantized op at all; Vela is then not run
            (it would put every op on the CPU) and the cell says why.
    """
    if not has_integer_ops:
        return VelaCell(CellStatus.NOT_APPLICABLE, accelerator=ACCELERATOR, reason=FLOAT_MODEL)
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
            op_types=_op_types(model),
        )


def _op_types(model: Path) -> dict[str, str]:
    """The model's op type by output tensor name (what Vela's CPU lines name an op by)."""
    from core.engine.flatbuffer import op_outputs

    return {tensor: op for op, tensor in op_outputs(model.read_bytes())}


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
    op_types: dict[str, str] | None = None,
) -> VelaCell:
    """The cell Vela's printed summary and its CSV say.

    The CSV's memory figures are KiB; they are stored in bytes. `op_types` maps output tensor
    names to the model's op types, so a CPU op is named as the model names it (Vela calls
    every op it leaves to the CPU "Passthrough"); unknown names keep Vela's type.
    """
    counts = {kind: int(n) for kind, n in _COUNT.findall(text)}
    if returncode != 0 or not summary or "NPU" not in counts:
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

    names = op_types or {}
    cpu_types = {names.get(tensor, kind) for kind, tensor in _CPU_OP.findall(text)}
    npu_ops = counts.get("NPU", 0)

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
        cpu_ops=counts.get("CPU", 0),
        cpu_op_types=tuple(sorted(cpu_types)),
        sram_bytes=kib("sram_memory_used"),
        flash_bytes=(kib("off_chip_flash_memory_used") or 0)
        + (kib("on_chip_flash_memory_used") or 0),
        cycles=None if cycles is None else round(cycles),
        inferences_per_second=estimate("inferences_per_second"),
        version=release,
    )
