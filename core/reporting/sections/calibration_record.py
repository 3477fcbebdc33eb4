"""Where the run's calibration images came from: report.json's `calibration`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from core.reporting.sections.base import Section


@dataclass(frozen=True)
class CalibrationRecord(Section):
    """Where the calibration images came from (core.engine.stages.decode writes it).

    `source` is held-out | overlapping | separate | none; `images` were used of `requested`;
    `held_out` / `evaluable` split the data set; `path` and `sha256` name --calibration-data
    (a re-score checks the hash); `file` lists the images (calibration.csv).
    """

    KEY: ClassVar[str] = "calibration"

    source: str | None = None
    reason: str | None = None
    requested: int | None = None
    images: int | None = None
    held_out: int | None = None
    evaluable: int | None = None
    path: str | None = None
    sha256: str | None = None
    file: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    present: frozenset[str] | None = field(default=None, compare=False, repr=False)
