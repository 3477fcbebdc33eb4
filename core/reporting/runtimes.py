"""The runtime matrix in words: one table, variants x runtimes, shared by the CLI summary,
report.html and the dashboard (each only lays the cells out).

A cell says agreement with the original and its 95 % Wilson interval on n images, and how many
images the runtime alone flips against XNNPACK at the run's threads; a cell the runtime could
not fill says why.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.reporting.runmodel import RunReport, report_from
from core.reporting.sections.runtime_matrix import RuntimeCell, RuntimeMatrix
from core.types import Runtime, short_name


def runtime_label(name: str) -> str:
    """A runtime's column heading (its name when this version does not know it)."""
    try:
        return Runtime(name).label
    except ValueError:
        return name


def cell_text(cell: RuntimeCell | None) -> str:
    """`97.50% [93.1, 99.2] n=200 · 2 runtime flips`, or the reason it is empty."""
    if cell is None:
        return "-"
    if cell.reason is not None:
        return f"not run: {cell.reason}"
    if cell.agreement_pct is None:
        return f"n={cell.n}"
    text = (
        f"{cell.agreement_pct:.2f}% [{cell.ci_low_pct or 0.0:.1f}, {cell.ci_high_pct or 0.0:.1f}]"
        f" n={cell.n}"
    )
    if cell.runtime != Runtime.XNNPACK:
        flips = len(cell.runtime_flips)
        text += f" · {flips} runtime flip{'' if flips == 1 else 's'}"
    return text


def matrix_rows(report: RunReport | Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows (one per variant, report order); ([], []) without a matrix."""
    typed = report_from(report)
    matrix = typed.runtimes
    if matrix is None:
        return [], []
    header = ["variant", *(runtime_label(r) for r in matrix.runtimes)]
    names = [v.name for v in typed.variants if v.name in set(matrix.variants)]
    rows = []
    for name in names:
        variant = typed.variant(name)
        shown = short_name(name) if variant is None else typed.display_name(variant)
        rows.append([shown, *(cell_text(matrix.cell(name, r)) for r in matrix.runtimes)])
    return header, rows


def subset_sentence(matrix: RuntimeMatrix) -> str:
    """Which images each runtime ran on."""
    slow = [runtime_label(r) for r in matrix.runtimes if Runtime(r).on_subset]
    every = f"XNNPACK on all {matrix.total} images"
    if not slow:
        return every
    if matrix.subset >= matrix.total:
        return f"{every}; {', '.join(slow)} also on all of them, at 1 thread"
    return (
        f"{every}; {', '.join(slow)} at 1 thread on {matrix.subset} of them, drawn with seed "
        f"{matrix.seed} (the interval says what that many images can tell)"
    )


FLIPS_MEANING = (
    "runtime flips: images whose top-1 under that runtime differs from the same file's top-1 "
    "under XNNPACK at the run's threads (the runtime flipped them, not the quantization)"
)


def format_runtime_table(report: RunReport | Mapping[str, Any]) -> str:
    """The CLI's runtime matrix: the table, then which images and what a flip is; "" without."""
    header, rows = matrix_rows(report)
    matrix = report_from(report).runtimes
    if matrix is None or not rows:
        return ""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["runtime matrix (top-1 agreement with the original, 95% CI):"]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    lines.insert(2, "  ".join("-" * w for w in widths))
    lines.append(subset_sentence(matrix))
    lines.append(FLIPS_MEANING)
    return "\n".join(lines)
