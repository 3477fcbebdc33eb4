"""The calibration sweep (`--calibration-sweep`): report.json's `sweep`, its modes and points."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from core.reporting.sections.base import Section


@dataclass(frozen=True, kw_only=True)
class SweepRow(Section):
    """One point of the calibration sweep: a mode quantized with `size` images drawn with
    `seed`, measured on `n` evaluated images (agreement in %, its Wilson 95 % interval in %).
    What the chart and summary need is required; the rest may be missing from a report."""

    KEY: ClassVar[str] = "point"

    size: int
    seed: int
    agreement_pct: float
    ci95: tuple[float, float] | None = None
    n: int
    mean_kl: float
    size_bytes: int | None = None
    file: str | None = None  # relative to the run folder: sweep/int8-n50-s1.tflite
    extra: Mapping[str, Any] = field(default_factory=dict)
    present: frozenset[str] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class SweepMode(Section):
    """One swept mode: its rows, or the error that stopped it; then the summary per size
    (core.reporting.sweep.size_summary), where it flattens and the statement in words."""

    KEY: ClassVar[str] = "mode"
    NESTED: ClassVar[Mapping[str, type[Section]]] = {"points": SweepRow}
    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"error", "summary"})
    SUMMARISED = ("flattens_at", "run_size_enough", "statement")  # written with the summary

    error: str | None = None
    points: tuple[SweepRow, ...] = ()
    summary: tuple[Mapping[str, Any], ...] | None = None
    flattens_at: int | None = None
    run_size_enough: bool | None = None
    statement: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    present: frozenset[str] | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if self.summary is None:  # not summarised yet: none of its conclusions either
            for key in self.SUMMARISED:
                if d.get(key) is None:
                    d.pop(key, None)
        return d


@dataclass(frozen=True)
class Sweep(Section):
    """The calibration sweep (--calibration-sweep, core.engine.stages.sweep): what was swept,
    from which pool, each mode's points, and the statement the CLI, pages and report show."""

    KEY: ClassVar[str] = "sweep"
    NESTED: ClassVar[Mapping[str, type[Section]]] = {"modes": SweepMode}

    backend: str | None = None
    requested_sizes: tuple[int, ...] = ()
    sizes: tuple[int, ...] = ()
    seeds: int | None = None
    pool_source: str | None = None
    pool_images: int | None = None
    evaluated_n: int | None = None
    flat_within_pp: float | None = None
    run_calibration_samples: int | None = None
    notes: tuple[str, ...] = ()
    modes: Mapping[str, SweepMode] = field(default_factory=dict)
    statement: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    present: frozenset[str] | None = field(default=None, compare=False, repr=False)

    def with_mode(self, mode: str, entry: SweepMode) -> Sweep:
        """A copy with one mode's entry replaced (the object itself is frozen)."""
        return dataclasses.replace(self, modes={**self.modes, mode: entry})
