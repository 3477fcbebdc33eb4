"""One rung of the fix ladder made and measured: a candidate of the fix search.

Every rung's variant is made as any variant of its name is (core.engine.backends, the spec
says what the fix is) and measured on the selection images, one evaluation of the budget. A
rung kind that must check something before it is quantized registers it in `PREPARE`
(equalization verifies the equalized float model against the original first; bias correction
measures how much it changes it); a rung that
does not apply, cannot be made or is refused is recorded with its one-line reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from core.engine.fixes.ladder import Rung
from core.engine.fixes.search import Budget
from core.engine.fixes.selection import CANDIDATE_LATENCY_RUNS, SelectionBench, p50_ms
from core.engine.fixes.verdict import meets_bar
from core.errors import QuantLensError
from core.reporting.sections.fixes import CandidateStatus, FixCandidate
from core.types import VariantSpec

Progress = Callable[[float, str], None]


class RungSkipped(Exception):
    """A rung that does not apply to this model (its reason): recorded as skipped, no
    evaluation spent."""


class RungRefused(RungSkipped):
    """A rung whose check failed (the measured difference): recorded as refused."""


def _prepare_equalize(bench: SelectionBench, spec: VariantSpec) -> dict[str, Any]:
    from core.engine.equalize import EqualizationError
    from core.engine.fixes.equalize_rung import EqualizationRefused, verified_fix

    assert bench.reference.calibration is not None  # checked before the search starts
    try:
        return verified_fix(bench.run.model, bench.reference.calibration, bench.images())
    except EqualizationRefused as exc:  # the float model changed: not quantized
        raise RungRefused(first_line(exc)) from exc
    except EqualizationError as exc:  # nothing to pair
        raise RungSkipped(first_line(exc)) from exc


def _prepare_bias_correction(bench: SelectionBench, spec: VariantSpec) -> dict[str, Any]:
    """Bias correct the Keras model (core.engine.fixes.bias_correct; the conversion below reuses
    it) and measure how much the corrected float model differs from the original on the
    selection images: not refused for differing, it compensates the int8 error by design."""
    from core.engine.backends import bias_correction
    from core.engine.fixes.bias_correct import BiasCorrectionError, float_change

    assert bench.reference.calibration is not None  # checked before the search starts
    run = bench.run
    try:
        corrected = bias_correction(
            run.model,
            spec,
            model_sha256=run.model_sha,
            calibration=bench.reference.calibration,
            preset=run.job.preset,
        )
    except BiasCorrectionError as exc:  # no layer it can correct, or a model it cannot clone
        raise RungSkipped(first_line(exc)) from exc
    change = float_change(run.model, corrected, bench.images())
    return {
        **corrected.as_fix(),
        "float_checked_on": "selection images",
        "float_images": change.images,
        "float_top1_agreement_pct": 100.0 * change.top1_agreement,
        "float_max_abs_delta": change.max_abs_delta,
    }


# Per rung kind: the check that must pass before its variant is made, returning the rung's
# typed `fix`; it raises RungSkipped or RungRefused to stop the rung with its reason.
PREPARE: dict[str, Callable[[SelectionBench, VariantSpec], dict[str, Any]]] = {
    "equalize": _prepare_equalize,
    "bias_correction": _prepare_bias_correction,
}


def skipped(parent: VariantSpec, kind: str, reason: str) -> FixCandidate:
    """A rung recorded without a measurement, with why."""
    return FixCandidate(
        kind=kind,
        variant=None,
        parent=parent.name,
        fix={"kind": kind},
        status=CandidateStatus.SKIPPED,
        reason=reason,
    )


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def try_rung(
    bench: SelectionBench,
    parent: VariantSpec,
    rung: Rung,
    budget: Budget,
    progress: Progress,
) -> FixCandidate:
    """Make one rung's variant and measure it (one evaluation of the budget)."""
    from core.engine.backends import tflite_from_reference
    from core.engine.convert import PROBE_IMAGES
    from core.engine.flatbuffer import integer_only
    from core.engine.stages.decode import first_images

    if rung.spec is None:
        return skipped(parent, rung.kind, rung.reason or "does not apply")
    base = FixCandidate(
        kind=rung.kind,
        variant=rung.spec.name,
        parent=parent.name,
        fix=rung.fix,
        status=CandidateStatus.FAILED,
        note=rung.note,
    )
    if not budget.take():
        return replace(base, status=CandidateStatus.SKIPPED, reason="the evaluation budget ran out")
    progress(budget.used / max(budget.total, 1), f"fix ladder: {rung.kind} ({rung.spec.name})")
    run = bench.run
    fix = dict(rung.fix)
    try:
        prepare = PREPARE.get(rung.kind)
        if prepare is not None:
            fix = prepare(bench, rung.spec)
        tflite = tflite_from_reference(
            run.model,
            rung.spec,
            model_sha256=run.model_sha,
            calibration=bench.reference.calibration,
            preset=run.job.preset,
            probe=first_images(run, PROBE_IMAGES),
            cache_dir=run.cache_dir,
        ).tflite
        measured = bench.measure(tflite)
    except RungSkipped as exc:
        budget.used -= 1  # nothing was measured
        status = (
            CandidateStatus.REFUSED if isinstance(exc, RungRefused) else CandidateStatus.SKIPPED
        )
        return replace(base, fix=fix, status=status, reason=str(exc))
    except (QuantLensError, ValueError, RuntimeError) as exc:
        return replace(base, fix=fix, reason=first_line(exc))
    return replace(
        base,
        fix=fix,
        status=CandidateStatus.MEASURED,
        agreement_pct=measured.agreement_pct,
        n=measured.n,
        mean_kl=measured.mean_kl if np.isfinite(measured.mean_kl) else None,
        size_bytes=measured.size_bytes,
        p50_ms=p50_ms(tflite, run.image_shape),
        latency_runs=CANDIDATE_LATENCY_RUNS,
        integer_only=integer_only(tflite).integer_only,
        meets_bar=meets_bar(run.job, measured),
    )
