"""The search over the fix ladder, built so its result can be trusted.

- Candidates are measured on one seeded half of the evaluation images (`split_rows`); the
  derived variant is judged on the other half only, so the images that chose a fix never
  vouch for it.
- The budget counts candidate evaluations, not seconds: the same budget gives the same result
  on a slow machine, a fast one and a Ray cluster.
- Every candidate is kept, failed and skipped ones with their reason; `pareto` names those no
  other beats on agreement, size, p50 latency and integer-only at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.reporting.sections.fixes import CandidateStatus, FixCandidate

SELECT_IMAGES = 300  # at most this many images choose a fix (the notes: about 300 suffice)
DEFAULT_BUDGET = 24  # candidate evaluations per variant when --fix-budget is not given


@dataclass(frozen=True)
class Split:
    """Row positions (samples.csv order) that select a fix and those that judge it."""

    seed: int
    selected: tuple[int, ...]
    held_out: tuple[int, ...]


def split_rows(n: int, seed: int, *, select_max: int = SELECT_IMAGES) -> Split:
    """A seeded split of n rows: half of them (at most `select_max`) select, the rest judge.

    Raises:
        ValueError: fewer than 2 rows (nothing would be left to judge on).
    """
    if n < 2:
        raise ValueError(f"a fix search needs at least 2 evaluation images to split, not {n}")
    order = np.random.default_rng(seed).permutation(n)
    count = min(n // 2, select_max)
    return Split(
        seed=seed,
        selected=tuple(sorted(int(i) for i in order[:count])),
        held_out=tuple(sorted(int(i) for i in order[count:])),
    )


class Budget:
    """Candidate evaluations left; `truncated` once a candidate was refused for want of one."""

    def __init__(self, evaluations: int) -> None:
        self.total = max(0, int(evaluations))
        self.used = 0
        self.truncated = False

    @property
    def left(self) -> int:
        return self.total - self.used

    def take(self) -> bool:
        """Spend one evaluation; False (and truncated) when none is left."""
        if self.used >= self.total:
            self.truncated = True
            return False
        self.used += 1
        return True


def pareto(candidates: Sequence[FixCandidate]) -> tuple[str, ...]:
    """The measured candidates no other candidate dominates: at least as good on agreement
    (higher), size (smaller), p50 latency (lower) and integer-only (True), better on one."""
    measured = [
        c for c in candidates if c.status == CandidateStatus.MEASURED and c.variant is not None
    ]

    def key(c: FixCandidate) -> tuple[float, float, float, float]:
        return (
            float(c.agreement_pct or 0.0),
            -float(c.size_bytes or 0),
            -float(c.p50_ms if c.p50_ms is not None else np.inf),
            1.0 if c.integer_only else 0.0,
        )

    def dominates(a: FixCandidate, b: FixCandidate) -> bool:
        ka, kb = key(a), key(b)
        return all(x >= y for x, y in zip(ka, kb, strict=True)) and ka != kb

    names = [c.variant for c in measured if not any(dominates(o, c) for o in measured)]
    return tuple(dict.fromkeys(n for n in names if n is not None))


def choose(
    candidates: Sequence[FixCandidate], *, integer_only: bool, parent_pct: float | None = None
) -> tuple[FixCandidate | None, bool]:
    """(the candidate to derive, whether it meets the bar): the first measured candidate in
    ladder order (cheapest first) that meets the bar on the selection images, else the one
    with the best agreement so far (ties: the cheaper); with `integer_only`, among the
    integer-only candidates. Either way it must beat the parent's agreement on the same images
    (`parent_pct`): a rung that only ties its parent (the parent can meet the bar on the
    selection half while missing it overall) changed nothing those images can see."""
    pool = [
        c
        for c in candidates
        if c.status == CandidateStatus.MEASURED
        and c.variant is not None
        and (c.integer_only or not integer_only)
        and (parent_pct is None or float(c.agreement_pct or 0.0) > parent_pct)
    ]
    meeting = [c for c in pool if c.meets_bar]
    if meeting:
        return meeting[0], True
    if not pool:
        return None, False  # nothing helped: no variant is invented
    best = max(float(c.agreement_pct or 0.0) for c in pool)
    return next(c for c in pool if float(c.agreement_pct or 0.0) == best), False
