"""The fix ladder's record in a variant entry: the search (`auto_fix.search`, every candidate it
tried) and a derived variant's judgement on the images the search did not see."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.reporting.sections.base import MappingView, jsonable


class CandidateStatus(enum.StrEnum):
    """What became of one rung the fix search tried (report.json keeps the words)."""

    MEASURED = "measured"
    FAILED = "failed"
    REFUSED = "refused"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class FixCandidate(MappingView):
    """One rung of the fix ladder as the search tried it (core.engine.fixes.search).

    `fix` is typed by its `kind` (equalize, int16_activations, keep_float, ...) with the layers
    it touches (`{"kind": "equalize", "layers": [...], "pairs": ..., "float_max_abs_delta":
    ...}`). `status` is measured, failed (`reason`: the one-line error), refused (an
    equalized float model that changed the outputs; `reason` gives the measured difference)
    or skipped (`reason`: why the rung does not apply). Measured candidates carry agreement on the search's own
    images (`n` of them), size, p50 latency at batch 1 (`p50_ms`, `latency_runs` runs) and
    `integer_only` (core.engine.flatbuffer.integer_only). `note` flags what a user must know
    (16-bit activations run on reference kernels on CPU).
    """

    kind: str
    variant: str | None
    parent: str
    fix: Mapping[str, Any]
    status: str
    reason: str | None = None
    agreement_pct: float | None = None
    n: int | None = None
    mean_kl: float | None = None
    size_bytes: int | None = None
    p50_ms: float | None = None
    latency_runs: int | None = None
    integer_only: bool | None = None
    meets_bar: bool | None = None
    note: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FixCandidate:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: jsonable(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if not (f.name in ("reason", "note") and getattr(self, f.name) is None)
        }


@dataclass(frozen=True)
class FixSearch(MappingView):
    """The fix ladder's search for one variant (its entry's `auto_fix.search`).

    Candidates were selected on `selected_rows` (row positions of samples.csv, a seeded split
    of the evaluation images) and the chosen one is judged on the other rows only
    (`held_out_rows`). `budget` counts candidate evaluations; `truncated` says the budget ran
    out before the ladder did. `pareto` names the measured candidates no other beats on
    agreement, size, p50 latency and integer-only at once. `chosen` is the variant the search
    derived (the cheapest rung meeting the bar, else the best so far when it beats the parent
    on the same images, `parent_agreement_pct`: `chosen_meets_bar` says which).
    """

    seed: int
    selected_rows: tuple[int, ...]
    held_out_rows: tuple[int, ...]
    budget: int
    evaluations: int
    truncated: bool
    integer_only_required: bool
    candidates: tuple[FixCandidate, ...]
    pareto: tuple[str, ...]
    chosen: str | None
    chosen_meets_bar: bool
    parent_agreement_pct: float | None = None  # the parent on the same selection images

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FixSearch:
        return cls(
            seed=int(d["seed"]),
            selected_rows=tuple(int(x) for x in d.get("selected_rows") or ()),
            held_out_rows=tuple(int(x) for x in d.get("held_out_rows") or ()),
            budget=int(d["budget"]),
            evaluations=int(d["evaluations"]),
            truncated=bool(d["truncated"]),
            integer_only_required=bool(d.get("integer_only_required")),
            candidates=tuple(FixCandidate.from_dict(c) for c in d.get("candidates") or ()),
            pareto=tuple(str(x) for x in d.get("pareto") or ()),
            chosen=d.get("chosen"),
            chosen_meets_bar=bool(d.get("chosen_meets_bar")),
            parent_agreement_pct=d.get("parent_agreement_pct"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "selected_rows": list(self.selected_rows),
            "held_out_rows": list(self.held_out_rows),
            "budget": self.budget,
            "evaluations": self.evaluations,
            "truncated": self.truncated,
            "integer_only_required": self.integer_only_required,
            "candidates": [c.to_dict() for c in self.candidates],
            "pareto": list(self.pareto),
            "chosen": self.chosen,
            "chosen_meets_bar": self.chosen_meets_bar,
            "parent_agreement_pct": self.parent_agreement_pct,
        }


@dataclass(frozen=True)
class HeldOutJudgement(MappingView):
    """A derived variant judged on the images its search did not see (its entry's
    `judged_on_held_out`): the verdict `passed` follows this, not the all-image agreement."""

    n: int
    agreeing: int
    top1_agreement_pct: float
    top1_agreement_ci95: tuple[float, float]
    passed: bool
    rows: str = "held out from the fix search (auto_fix.search.held_out_rows of the parent)"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HeldOutJudgement:
        low, high = d["top1_agreement_ci95"]
        return cls(
            n=int(d["n"]),
            agreeing=int(d["agreeing"]),
            top1_agreement_pct=float(d["top1_agreement_pct"]),
            top1_agreement_ci95=(float(low), float(high)),
            passed=bool(d["passed"]),
            rows=str(d.get("rows") or ""),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "agreeing": self.agreeing,
            "top1_agreement_pct": self.top1_agreement_pct,
            "top1_agreement_ci95": list(self.top1_agreement_ci95),
            "passed": self.passed,
            "rows": self.rows,
        }
