"""The fix search for one variant below the bar: walk the ladder, cheapest first, on the
selection images, within the budget, and record everything tried.

Records the variant's `auto_fix` (its `search`, typed as core.reporting.sections.fixes.FixSearch,
and the keep-float rung's `sensitivity` and `steps`); the chosen fix joins report.json as a
pending derived variant (`parent`, `derived_by: "auto-fix"`) that the auto-fix stage then
converts and evaluates like any other.
"""

from __future__ import annotations

from typing import Any

from core.engine.fixes.candidate import skipped, try_rung
from core.engine.fixes.keep_float_search import KIND as KEEP_FLOAT
from core.engine.fixes.keep_float_search import keep_float_rung
from core.engine.fixes.ladder import ladder
from core.engine.fixes.search import DEFAULT_BUDGET, Budget, choose, pareto, split_rows
from core.engine.fixes.selection import SelectionBench
from core.engine.fixes.verdict import DERIVED_BY_AUTO_FIX
from core.engine.stages.context import RunContext
from core.engine.stages.reference import ReferenceOutputs
from core.inputs import rundir
from core.reporting.sections.fixes import FixCandidate, FixSearch
from core.reporting.sections.variant import Variant
from core.types import VariantSpec

INTEGER_ONLY = "integer-only"  # --fix's value: only the rungs that keep the model integer-only


def search_variant(
    run: RunContext, reference: ReferenceOutputs, spec: VariantSpec
) -> VariantSpec | None:
    """Walk the ladder for one variant; records `auto_fix` on its entry and, when a candidate
    was chosen, adds the chosen one's pending entry to report.json and returns its spec."""
    name = spec.name
    entry = run.report.variant(name)
    if reference.calibration is None:
        run.report.set_part(name, "auto_fix", {"error": "no calibration images to make a fix with"})
        run.report.save()
        return None
    try:
        split = split_rows(len(reference), run.job.fix_seed)
    except ValueError as exc:
        run.report.set_part(name, "auto_fix", {"error": str(exc)})
        run.report.save()
        return None

    def progress(fraction: float, message: str) -> None:
        run.emit("auto-fix", fraction, f"{name}: {message}", name)

    integer_only = run.job.fix == INTEGER_ONLY
    budget = Budget(run.job.fix_budget or DEFAULT_BUDGET)
    bench = SelectionBench(run, reference, split.selected)
    # The parent on the same images (free: no candidate), the floor a best-so-far must beat.
    parent = bench.measure(rundir.tflite_path(run.run_dir, spec).read_bytes())
    candidates: list[FixCandidate] = []
    for rung in ladder(spec, Variant.from_dict(entry).causes):
        if integer_only and rung.spec is not None and not rung.integer_only:
            reason = f"--fix integer-only: {rung.kind} computes in float"
            candidates.append(skipped(spec, rung.kind, reason))
            continue
        candidates.append(try_rung(bench, spec, rung, budget, progress))
    keep_float: dict[str, Any] = {}
    if integer_only:
        reason = "--fix integer-only: layers kept in float leave integer-only targets"
        candidates.append(skipped(spec, KEEP_FLOAT, reason))
    else:
        found = keep_float_rung(bench, spec, budget, parent, progress)
        keep_float = found.recorded
        candidates.extend(found.candidates)
    chosen, meets = choose(candidates, integer_only=integer_only, parent_pct=parent.agreement_pct)
    search = FixSearch(
        seed=split.seed,
        selected_rows=split.selected,
        held_out_rows=split.held_out,
        budget=budget.total,
        evaluations=budget.used,
        truncated=budget.truncated,
        integer_only_required=integer_only,
        candidates=tuple(candidates),
        pareto=pareto(candidates),
        chosen=None if chosen is None else chosen.variant,
        chosen_meets_bar=meets,
        parent_agreement_pct=parent.agreement_pct,
    )
    run.report.set_part(
        name, "auto_fix", {**keep_float, "search": search.to_dict(), "variant": search.chosen}
    )
    derived = None if search.chosen is None else VariantSpec.parse(search.chosen)
    if derived is None or derived.name in run.report.variant_names:
        run.report.save()
        return None
    _add_pending(run, derived, parent=name)
    return derived


def _add_pending(run: RunContext, derived: VariantSpec, *, parent: str) -> None:
    """The chosen fix's entry, saved before any work on it: a restarted worker re-adds it to
    the job (core.engine.stages.start)."""
    from core.reporting.report import ROLE_SELECTED, pending_variant

    run.report.put_variant(
        Variant.from_dict(pending_variant(derived, role=ROLE_SELECTED, parent=parent))
    )
    run.report.set_part(derived.name, "derived_by", DERIVED_BY_AUTO_FIX)
    run.report.save()
