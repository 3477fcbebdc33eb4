"""The runtime matrix (`--runtimes`): report.json's `runtimes`, each evaluated variant under
each chosen runtime."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.reporting.sections.base import MappingView


@dataclass(frozen=True)
class RuntimeCell(MappingView):
    """One variant under one runtime: agreement with the original on `n` images, or why it
    could not run there (`reason`, the numbers then empty).

    `runtime_flips` are the data set indices of the images whose top-1 under this runtime
    differs from the same file's top-1 under XNNPACK at the run's threads (the run's own
    evaluation): flips of the runtime, not of the quantization.
    """

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

    KEYS = (
        "variant",
        "runtime",
        "n",
        "agree",
        "agreement_pct",
        "ci_low_pct",
        "ci_high_pct",
        "accuracy_pct",
        "labelled",
        "disagreement_split",
        "runtime_flips",
        "threads",
        "delegate",
        "reason",
    )

    @property
    def measured(self) -> bool:
        return self.reason is None

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> RuntimeCell:
        values = {k: entry[k] for k in cls.KEYS if k in entry}
        split = values.get("disagreement_split")
        values["disagreement_split"] = None if split is None else dict(split)
        values["runtime_flips"] = tuple(int(i) for i in values.get("runtime_flips") or ())
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.KEYS}
        d["runtime_flips"] = list(self.runtime_flips)
        d["disagreement_split"] = (
            None if self.disagreement_split is None else dict(self.disagreement_split)
        )
        return d


@dataclass(frozen=True)
class RuntimeMatrix(MappingView):
    """report.json's `runtimes`: every evaluated variant under each chosen runtime.

    `subset` is how many images the slow runtimes (built-in, reference kernels, TFLite-Micro)
    ran on, drawn with `seed` from the `total` evaluated images (equal to `total` when the
    user asked for all of them), `subset_indices` their data set indices; XNNPACK runs every
    image.
    """

    runtimes: tuple[str, ...] = ()
    total: int = 0
    subset: int = 0
    seed: int = 0
    subset_indices: tuple[int, ...] = ()
    cells: tuple[RuntimeCell, ...] = ()

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

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> RuntimeMatrix:
        return cls(
            runtimes=tuple(str(r) for r in entry.get("runtimes") or ()),
            total=int(entry.get("total") or 0),
            subset=int(entry.get("subset") or 0),
            seed=int(entry.get("seed") or 0),
            subset_indices=tuple(int(i) for i in entry.get("subset_indices") or ()),
            cells=tuple(
                RuntimeCell.from_dict(c) for c in entry.get("cells") or () if isinstance(c, Mapping)
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtimes": list(self.runtimes),
            "total": self.total,
            "subset": self.subset,
            "seed": self.seed,
            "subset_indices": list(self.subset_indices),
            "cells": [c.to_dict() for c in self.cells],
        }
