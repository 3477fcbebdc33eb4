"""The deployability stage: per finished variant, read from its `.tflite` without a device,
whether an integer-only target runs it (core.engine.flatbuffer.integer_only), whether
TFLite-Micro plans it and with what arena (core.engine.micro), and how Vela maps it to an Arm
Ethos-U NPU (core.engine.vela); plus, for a derived variant, whether its outputs equal its
parent's bit for bit. Writes each variant's `deployability` (core.reporting.sections.deployability.Deployability).

Runs after timing, so its two child processes never compete with a timed model; a restarted
worker skips the variants that already have one.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from core.engine.stages.context import RunContext
from core.inputs import rundir
from core.reporting.sections.deployability import (
    CellStatus,
    Deployability,
    IntegerOnlyCell,
    MicroCell,
    VelaCell,
)
from core.reporting.targets import ACCELERATOR, NO_INTEGER_OPS
from core.types import VariantStatus


def check_deployability(run: RunContext) -> None:
    """Write `deployability` into every finished variant that has none yet."""
    todo = [
        spec.name
        for spec in run.specs
        if run.report.variant(spec.name)["status"] == VariantStatus.DONE
        and not run.report.variant(spec.name).get("deployability")
    ]
    for i, name in enumerate(todo):
        run.emit(
            "deploy",
            i / len(todo),
            f"deployability of {name}: integer-only, TFLite-Micro, Vela",
            variant=name,
        )
        entry = run.report.variant(name)
        files = rundir.entry_files(entry)
        parent = entry.get("parent")
        same = parent is not None and identical_outputs(
            rundir.probs_path(run.run_dir, files),
            rundir.probs_path(run.run_dir, run.report.files_of(parent)),
        )
        found = preflight(rundir.tflite_path(run.run_dir, files))
        run.report.set_result(
            name,
            deployability=Deployability(
                found.integer_only, found.micro, found.vela, identical_to=parent if same else None
            ),
        )
        run.report.save()


def preflight(model: Path) -> Deployability:
    """The three checks of one `.tflite`; TFLite-Micro and Vela run side by side (each in its
    own child process)."""
    from core.engine.flatbuffer import integer_only, op_outputs
    from core.engine.micro import micro_check
    from core.engine.vela import vela_check

    data = model.read_bytes()
    check = integer_only(data)
    computing = [op for op, _ in op_outputs(data) if op not in ("QUANTIZE", "DEQUANTIZE", "CAST")]
    # A model none of whose ops computes in integers gives Vela nothing to map.
    has_integer_ops = len(check.blockers) < len(computing)
    integer = IntegerOnlyCell(check.integer_only, check.float_io, check.blockers)
    if not has_integer_ops:
        # Neither tool can say anything a target uses (mcu and Ethos-U run integer ops only),
        # and skipping them keeps a float variant's pre-flight to this flatbuffer read.
        return Deployability(
            integer,
            MicroCell(CellStatus.NOT_APPLICABLE, reason=NO_INTEGER_OPS),
            VelaCell(CellStatus.NOT_APPLICABLE, accelerator=ACCELERATOR, reason=NO_INTEGER_OPS),
        )
    with ThreadPoolExecutor(max_workers=2) as pool:
        micro = pool.submit(micro_check, model)
        vela = pool.submit(vela_check, model)
        return Deployability(integer, micro.result(), vela.result())


def identical_outputs(a: Path, b: Path) -> bool:
    """True when both per-sample output files exist and hold the same numbers, bit for bit."""
    if not (a.is_file() and b.is_file()):
        return False
    first, second = np.load(a, mmap_mode="r"), np.load(b, mmap_mode="r")
    return bool(
        first.shape == second.shape
        and first.dtype == second.dtype
        and np.array_equal(first.view(np.uint8), second.view(np.uint8))
    )
