"""The auto-fix stage: the fix ladder (core.engine.fixes) for each judged variant below the bar.

For each such variant the fix search (core.engine.fixes.walk) measures the ladder's rungs on a
seeded half of the evaluation images and adds the chosen fix to report.json as a derived
variant; this stage converts and evaluates it like any other (the time stage times it with the
others), then judges every derived fix on the images its search did not see
(core.engine.fixes.verdict). On --engine ray one cluster session serves every search.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import Any

from core.engine.convert import PROBE_IMAGES, ConversionResult
from core.engine.fixes.verdict import judge_on_held_out
from core.engine.fixes.walk import search_variant
from core.engine.stages.context import RunContext
from core.engine.stages.convert import Conversion, convert_in_background
from core.engine.stages.decode import first_images
from core.engine.stages.diagnose import diagnose_finished, needs_diagnosis, row_samples
from core.engine.stages.evaluate import run_evaluation
from core.engine.stages.reference import ReferenceOutputs
from core.errors import QuantLensError
from core.types import NEEDS_CALIBRATION, JobSpec, VariantSpec, VariantStatus


def auto_fix(run: RunContext, reference: ReferenceOutputs) -> RunContext:
    """`--auto-fix K`: each judged variant below the bar gets the fix ladder's search, and its
    result as a derived variant (K: at most K layers kept in float on the last rung).

    Returns the context with the derived variants among its specs, so the time stage times them.
    """
    if not run.job.auto_fix:
        return run
    _note_nothing_to_fix(run)
    todo = [s for s in run.specs if auto_fix_applies(s, run.report.variant(s.name), run.job)]
    if todo:
        with _cluster_session(run):  # on --engine ray, one session for every search
            for spec in todo:
                derived = search_variant(run, reference, spec)
                if derived is not None:
                    run = replace(run, specs=(*run.specs, derived))
                    _convert_and_evaluate(run, reference, derived)
    # Every derived fix is judged on its held-out images, including one a restarted worker
    # evaluated with the other pending variants.
    for spec in run.specs:
        judge_on_held_out(run, spec)
    return run


def _cluster_session(run: RunContext) -> AbstractContextManager[object]:
    if run.job.engine != "ray":
        return nullcontext()
    from core.engine import ray_engine

    return ray_engine.job_session(run.job)


def auto_fix_applies(spec: VariantSpec, entry: Mapping[str, Any], job: JobSpec) -> bool:
    """Whether `--auto-fix` works on this variant: a finished, judged variant without overrides,
    below the bar (not for want of a verdict), on a mode that can keep layers in float."""
    return _fixable(spec, entry) and not _entry_meets_bar(entry, job)


def _fixable(spec: VariantSpec, entry: Mapping[str, Any]) -> bool:
    """A finished, judged variant the user selected, without overrides, not fixed yet, on a mode
    that can keep layers in float."""
    from core.reporting.report import ROLE_SELECTED

    if spec.has_overrides or entry.get("auto_fix") is not None:
        return False
    if entry.get("role") != ROLE_SELECTED or entry.get("status") != VariantStatus.DONE:
        return False
    if entry.get("verdict_reason") or entry.get("top1_agreement_pct") is None:
        return False
    try:
        replace(spec, float_layers=("any",)).check()
    except QuantLensError:
        return False
    return True


def _entry_meets_bar(entry: Mapping[str, Any], job: JobSpec) -> bool:
    from core.reporting.report import meets_threshold

    return meets_threshold(
        entry["top1_agreement_pct"],
        entry.get("top1_agreement_ci95"),
        job.min_agreement_pct,
        job.verdict,
    )


def _note_nothing_to_fix(run: RunContext) -> None:
    """`--auto-fix` on a variant that already meets the bar says so instead of staying silent
    (report.json's `auto_fix.nothing_to_fix`, which the CLI prints)."""
    from core.reporting.report import VERDICT_LOWER_BOUND

    noted = False
    for spec in run.specs:
        entry = run.report.variant(spec.name)
        if _fixable(spec, entry) and _entry_meets_bar(entry, run.job):
            bound = " (lower 95 % bound)" if run.job.verdict == VERDICT_LOWER_BOUND else ""
            run.report.set_part(
                spec.name,
                "auto_fix",
                {
                    "nothing_to_fix": f"{spec.name} meets {run.job.min_agreement_pct:g} %{bound}, "
                    "nothing to fix"
                },
            )
            noted = True
    if noted:
        run.report.save()


def _convert_and_evaluate(
    run: RunContext,
    reference: ReferenceOutputs,
    spec: VariantSpec,
) -> None:
    """Convert a derived variant and evaluate it as the evaluate stage does any other, then
    diagnose it."""
    if run.job.engine == "ray":
        from core.engine.stages.ray_evaluate import evaluate_added_on_ray

        evaluate_added_on_ray(run, reference, row_samples(run, reference))
        if needs_diagnosis(run, spec):
            diagnose_finished(run, reference, spec)
        return
    calibration = reference.calibration if spec.mode in NEEDS_CALIBRATION else None
    future: Future[ConversionResult] = Future()
    try:
        future.set_result(
            convert_in_background(run, spec, calibration, first_images(run, PROBE_IMAGES))
        )
    except QuantLensError as exc:
        future.set_exception(exc)
    run_evaluation(run, reference, [Conversion(spec=spec, future=future)])
    if needs_diagnosis(run, spec):
        diagnose_finished(run, reference, spec)
