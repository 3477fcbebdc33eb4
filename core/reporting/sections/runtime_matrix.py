"""The runtime matrix (`--runtimes`): report.json's `runtimes`, each evaluated variant under
each chosen runtime."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from core.reporting.sections.base import Section


@dataclass(frozen=True)
class RuntimeCell(Section):
    """One variant under one runtime: agreement with the original on `n` images, or why it
    could not run there (`reason`, the numbers then empty).

    `runtime_flips` are the data set indices of the images whose top-1 under this runtime
    differs from the same file's top-1 under XNNPACK at the run's threads (the run's own
    evaluation): flips of the runtime, not of the quantization.
    """

    KEY: ClassVar[str] = "cell"

    variant: str
    runtime: str
    n: int = 0
    agree: int = 0
    agreement_pct: float | None = None
    ci_low_pct: float | None = None
    ci_high_pct: float | None = None
    accuracy_pct: float | None = None
    labelled: int = 0
    disagreement_split: Mapping[str, int] | None = None
    runtime_flips: tuple[int, ...] = ()
    threads: int | None = None
    delegate: str | None = None  # what ran it (TFLiteRunner.describe), e.g. "xnnpack"
    reason: str | None = None  # why the cell is empty; None when measured
    extra: Mapping[str, Any] = field(default_factory=dict)
    present: frozenset[str] | None = field(default=None, compare=False, repr=False)

    @property
    def measured(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class RuntimeMatrix(Section):
    """report.json's `runtimes`: every evaluated variant under each chosen runtime.

    `subset` is how many images the slow runtimes (built-in, reference kernels, TFLite-Micro)
    ran on, drawn with `seed` from the `total` evaluated images (equal to `total` when the
    user asked for all of them), `subset_indices` their data set indices; XNNPACK runs every
    image. The runtimes stage builds it whole and stores it with `ReportFile.put`.
    """

    KEY: ClassVar[str] = "runtimes"
    NESTED: ClassVar[Mapping[str, type[Section]]] = {"cells": RuntimeCell}

    runtimes: tuple[str, ...] = ()
    total: int = 0
    subset: int = 0
    seed: int = 0
    subset_indices: tuple[int, ...] = ()
    cells: tuple[RuntimeCell, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)
    present: frozenset[str] | None = field(default=None, compare=False, repr=False)

    def cell(self, variant: str, runtime: str) -> RuntimeCell | None:
        """The cell of `variant` under `runtime`, or None when the matrix has none."""
        return next((c for c in self.cells if c.variant == variant and c.runtime == runtime), None)

    @property
    def variants(self) -> list[str]:
        """The variants in the matrix, in report order."""
        return list(dict.fromkeys(c.variant for c in self.cells))

    def runtime_flips(self, variant: str) -> dict[str, tuple[int, ...]]:
        """Per runtime, the images it flips for `variant` against XNNPACK (non-empty only)."""
        return {
            c.runtime: c.runtime_flips
            for c in self.cells
            if c.variant == variant and c.runtime_flips
        }
