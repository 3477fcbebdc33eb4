"""A variant's flips by (original's class, variant's class): report.json's `flip_matrix`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.reporting.sections.base import MappingView


@dataclass(frozen=True)
class FlipMatrix(MappingView):
    """The disagreeing samples of a variant by (original's class, variant's class), sparse.

    report.json holds only the non-zero cells: dense, the matrix made the report grow with
    the square of the class count (1,000 classes: a million numbers per variant, rewritten
    after every step). Reports of schema 1 and 2 hold the dense rows; both read into this.
    """

    classes: int
    cells: tuple[tuple[int, int, int], ...] = ()  # (ref, tfl, count), count > 0, row-major

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[int]]) -> FlipMatrix:
        """The sparse form of dense rows (rows = original's class, columns = variant's)."""
        cells = tuple(
            (i, j, int(count)) for i, row in enumerate(rows) for j, count in enumerate(row) if count
        )
        return cls(classes=len(rows), cells=cells)

    @classmethod
    def from_json(cls, value: Any) -> FlipMatrix:
        """Read report.json's `flip_matrix`: dense rows (schema 1, 2) or the sparse object."""
        if isinstance(value, FlipMatrix):
            return value
        if isinstance(value, Mapping):
            cells = tuple(sorted((int(r), int(t), int(n)) for r, t, n in value["cells"] if n))
            return cls(classes=int(value["classes"]), cells=cells)
        return cls.from_rows(value)

    def to_dict(self) -> dict[str, Any]:
        return {"classes": self.classes, "cells": [list(c) for c in self.cells]}

    @property
    def total(self) -> int:
        """Every flip counted (NaN outputs are disagreements but not flips)."""
        return sum(n for _, _, n in self.cells)

    def rows(self, classes: Sequence[int] | None = None) -> list[list[int]]:
        """Dense rows over `classes` (all of them by default), in that order."""
        order = list(range(self.classes)) if classes is None else list(classes)
        at = {c: i for i, c in enumerate(order)}
        out = [[0] * len(order) for _ in order]
        for r, t, n in self.cells:
            if r in at and t in at:
                out[at[r]][at[t]] = n
        return out

    def busiest_classes(self, limit: int) -> list[int]:
        """The `limit` classes in the most flips (ties to the lower class number), in class
        order: what a heatmap of many classes shows."""
        weight: dict[int, int] = {}
        for r, t, n in self.cells:
            weight[r] = weight.get(r, 0) + n
            weight[t] = weight.get(t, 0) + n
        top = sorted(weight, key=lambda c: (-weight[c], c))[:limit]
        return sorted(top)
