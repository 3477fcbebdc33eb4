"""Deployment targets: what each one runs, and why a variant is excluded from it.

A target is where the user will ship: `cpu` (LiteRT with XNNPACK, what QuantLens measures),
`integer-only` (an NPU or Edge TPU-like accelerator: every op must compute in integers), `mcu`
(TFLite-Micro: integer-only, reference kernels, an arena no larger than the user's limit) and
`gpu` (float16 numerics on a mobile GPU: not evaluated on this machine). Whether a variant can
run on one is read from its deployability pre-flight (core.reporting.sections.deployability.Deployability);
nothing here runs a model.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from core.reporting.sections.deployability import CellStatus, Deployability
from core.reporting.sections.variant import Variant
from core.types import short_name


class Target(enum.StrEnum):
    CPU = "cpu"
    INTEGER_ONLY = "integer-only"
    MCU = "mcu"
    GPU = "gpu"


DEFAULT_TARGET = Target.CPU
# The TFLite-Micro and Vela cells of a model none of whose ops computes in integers: neither
# tool is run on it (core.engine.stages.deploy).
NO_INTEGER_OPS = (
    "no op computes in integers, and the mcu target and the Ethos-U NPU run only int8 and int16 ops"
)
NOT_RUN = "not run: no op computes in integers"
# The Ethos-U configuration Vela compiles for (core.engine.vela): the smallest common Ethos-U55.
ACCELERATOR = "ethos-u55-128"

# Said wherever targets are listed (docs/runtimes-and-targets.md, the Deploy page, report.html).
GPU_NOT_EVALUATED = (
    "the gpu target is not evaluated on this machine: it has no GPU, LiteRT's GPU accelerator "
    "does not start without one, and QuantLens shows no GPU figure it did not measure"
)
GPU_ANALYZER_NOT_USED = (
    "TensorFlow's GPU compatibility analyzer is not used: measured with TF 2.21, it reports a "
    "model of UNIQUE, WHERE, RFFT2D and SEGMENT_SUM ops as compatible with the GPU delegate"
)
CORAL_NOT_AVAILABLE = (
    "Coral's Edge TPU compiler is not available from the package registries, so Edge TPU "
    "mapping is not checked; the integer-only check is the part of it QuantLens can do"
)


@dataclass(frozen=True)
class TargetProfile:
    """One target: its name, what it needs, and where its figures come from."""

    target: Target
    title: str
    needs: str
    measured_on: str  # where agreement and latency for this target come from


PROFILES = {
    Target.CPU: TargetProfile(
        Target.CPU,
        "CPU (LiteRT with XNNPACK)",
        "any op LiteRT runs",
        "agreement and latency measured here with LiteRT and XNNPACK",
    ),
    Target.INTEGER_ONLY: TargetProfile(
        Target.INTEGER_ONLY,
        "integer-only accelerator (NPU, Edge TPU-like)",
        "every op computing in integers (float input/output casts stay on the host CPU)",
        "agreement measured here with XNNPACK; latency is this machine's CPU, not the "
        "accelerator's (Vela's cycle estimate stands in for an Ethos-U)",
    ),
    Target.MCU: TargetProfile(
        Target.MCU,
        "microcontroller (TFLite-Micro)",
        "every op computing in integers, every op kernel in TFLite-Micro, and an arena within "
        "the limit",
        "agreement under TFLite-Micro or the reference kernels when the run has them "
        "(`--runtimes tflm,reference`; a microcontroller's answers can differ from XNNPACK's), "
        "else under XNNPACK; latency is this machine's CPU",
    ),
    Target.GPU: TargetProfile(
        Target.GPU,
        "mobile GPU (float16 numerics)",
        "a GPU to evaluate on",
        "not evaluated: this machine has no GPU",
    ),
}


def float_ops_summary(blockers: Sequence[str]) -> str:
    """ "12 ops (CONV_2D, MEAN, SOFTMAX)": how many ops compute in float, and their types
    (each blocker reads "CONV_2D <output tensor> (FLOAT32)")."""
    kinds = sorted({b.split(" ", 1)[0] for b in blockers})
    count = len(blockers)
    return f"{count} op{'' if count == 1 else 's'} ({', '.join(kinds)})"


def _kib(n: int) -> str:
    return f"{n / 1024:.1f} KiB"


def exclusion(
    variant: Variant, target: Target, *, arena_limit_kb: float | None = None
) -> str | None:
    """Why `target` cannot run `variant`, in words; None when it can.

    A variant without a pre-flight (a report written before it existed, or one still running)
    is excluded from `integer-only` and `mcu`: nothing says it runs there.
    """
    if target == Target.GPU:
        return GPU_NOT_EVALUATED
    if target == Target.CPU:
        return None
    found = variant.result.deployability
    if found is None:
        return "no deployability pre-flight in this report (re-run to check it)"
    check = found.integer_only
    if not check.integer_only:
        return f"computes in float: {float_ops_summary(check.blockers)}"
    if target == Target.INTEGER_ONLY:
        return None
    return _micro_exclusion(found, arena_limit_kb)


def _micro_exclusion(found: Deployability, arena_limit_kb: float | None) -> str | None:
    micro = found.micro
    if micro.status == CellStatus.FAILS and micro.missing_op:
        return f"TFLite-Micro has no kernel for {micro.missing_op}"
    if micro.status != CellStatus.OK:
        return micro.reason or f"TFLite-Micro: {micro.status}"
    arena = micro.arena_bytes
    if arena_limit_kb is not None and arena is not None and arena > arena_limit_kb * 1024:
        return f"needs a {_kib(arena)} arena, over the {arena_limit_kb:g} KiB limit"
    return None


def cpu_fallback(variant: Variant) -> str | None:
    """ "2 of 52 ops on the CPU (QUANTIZE, DEQUANTIZE)" when Vela leaves ops of this variant to
    the Ethos-U's host CPU; None when it maps every op or was not run."""
    found = variant.result.deployability
    if found is None or not found.vela.falls_back_to_cpu:
        return None
    vela = found.vela
    total = (vela.npu_ops or 0) + (vela.cpu_ops or 0)
    kinds = f" ({', '.join(vela.cpu_op_types)})" if vela.cpu_op_types else ""
    return f"Ethos-U: {vela.cpu_ops} of {total} ops on the CPU{kinds}"


# -- the deployability table, as the page, report.html and the CLI show it ---------------------

DEPLOYABILITY_COLUMNS = (
    "variant",
    "integer-only",
    "TFLite-Micro",
    "Ethos-U ops (NPU / CPU)",
    "Ethos-U SRAM / flash",
    "Ethos-U estimate",
)
# The page shows the pre-flight as two tables, so neither needs a horizontal scroll.
MICRO_COLUMNS = DEPLOYABILITY_COLUMNS[:3]
VELA_COLUMNS = (DEPLOYABILITY_COLUMNS[0], *DEPLOYABILITY_COLUMNS[3:])


def _integer_cell(found: Deployability) -> str:
    check = found.integer_only
    if check.integer_only:
        return "yes" + (
            " (float input/output: the casts run on the host CPU)" if check.float_io else ""
        )
    return f"no: {float_ops_summary(check.blockers)} compute in float"


def _micro_cell(found: Deployability) -> str:
    micro = found.micro
    if micro.status == CellStatus.OK and micro.arena_bytes is not None:
        return f"runs; arena {_kib(micro.arena_bytes)}"
    if micro.status == CellStatus.NOT_APPLICABLE and micro.reason == NO_INTEGER_OPS:
        return NOT_RUN
    return micro.reason or str(micro.status)


def _vela_cells(found: Deployability) -> tuple[str, str, str]:
    vela = found.vela
    if vela.status == CellStatus.NOT_APPLICABLE and vela.reason == NO_INTEGER_OPS:
        return NOT_RUN, "—", "—"
    if vela.status != CellStatus.OK:
        return f"{vela.status}: {vela.reason}" if vela.reason else str(vela.status), "—", "—"
    kinds = f" ({', '.join(vela.cpu_op_types)})" if vela.cpu_op_types else ""
    ops = f"{vela.npu_ops} / {vela.cpu_ops}{kinds}"
    if vela.cpu_ops:
        ops += " — falls back to the CPU"
    memory = (
        "—"
        if vela.sram_bytes is None
        else f"{_kib(vela.sram_bytes)} / {_kib(vela.flash_bytes or 0)}"
    )
    estimate = (
        "—"
        if vela.cycles is None
        else f"{vela.cycles:,} cycles"
        + (
            f", {vela.inferences_per_second:,.0f} inferences/s"
            if vela.inferences_per_second
            else ""
        )
    )
    return ops, memory, estimate


def deployability_rows(variants: Sequence[Variant]) -> list[dict[str, str]]:
    """One row per variant with a pre-flight, in `DEPLOYABILITY_COLUMNS` order."""
    rows = []
    for v in variants:
        found = v.result.deployability
        if found is None:
            continue
        ops, memory, estimate = _vela_cells(found)
        cells = (
            short_name(v.name),
            _integer_cell(found),
            _micro_cell(found),
            ops,
            memory,
            estimate,
        )
        rows.append(dict(zip(DEPLOYABILITY_COLUMNS, cells, strict=True)))
    return rows


def deployability_lines(variants: Sequence[Variant]) -> list[str]:
    """The pre-flight as the CLI prints it, one line per variant."""
    return [
        f"deployability: {r['variant']}: integer-only {r['integer-only']}; TFLite-Micro "
        f"{r['TFLite-Micro']}; Ethos-U NPU/CPU ops {r['Ethos-U ops (NPU / CPU)']}"
        for r in deployability_rows(variants)
    ]


DEPLOYABILITY_NOTES = (
    "Ethos-U figures are Vela's estimates for an Ethos-U55 with 128 MACs in Vela's default "
    "system configuration (Ethos_U55_High_End_Embedded); ops are counted in the model's own "
    "ops, an op being on the CPU when Vela lists one of its outputs there.",
    "TFLite-Micro's arena is what its interpreter planned for the model on this machine: the "
    "smallest arena a device build of the same model needs (plus the application's own).",
    GPU_ANALYZER_NOT_USED + ".",
    CORAL_NOT_AVAILABLE + ".",
)
