"""The bar a fix must meet, and the derived fix's verdict on the images its search did not see.

A candidate meets the bar by the job's verdict rule applied to its measurement on the
selection images (`meets_bar`); the derived variant's `passed` is taken on the held-out images
only (`judge_on_held_out`), so the images that chose a fix never vouch for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from core.engine.stages.context import RunContext
from core.reporting.sections.fixes import HeldOutJudgement
from core.reporting.sections.variant import Variant
from core.types import JobSpec, VariantSpec, VariantStatus

if TYPE_CHECKING:
    from core.engine.fixes.keep_float import Measurement

DERIVED_BY_AUTO_FIX = "auto-fix"  # a variant entry's `derived_by`: added by --auto-fix


def meets_bar(job: JobSpec, measured: Measurement) -> bool:
    """The verdict rule of the job, applied to a measurement (its Wilson interval recomputed)."""
    from core.metrics.agreement import wilson_interval
    from core.reporting.report import meets_threshold

    agreeing = round(measured.agreement_pct * measured.n / 100.0)
    low, high = wilson_interval(agreeing, measured.n)
    return meets_threshold(
        measured.agreement_pct, (100.0 * low, 100.0 * high), job.min_agreement_pct, job.verdict
    )


def judge_on_held_out(run: RunContext, spec: VariantSpec) -> None:
    """A derived fix's verdict on the images its search did not see: `judged_on_held_out`
    (n, agreement, Wilson interval) and `passed` from it; its other metrics stay all-image.
    Does nothing for a variant that is no finished auto-fix result or is judged already."""
    from core.engine.stages.evaluate import written_agreement
    from core.metrics.agreement import wilson_interval
    from core.reporting.report import meets_threshold

    entry = run.report.variant(spec.name)
    if entry.get("derived_by") != DERIVED_BY_AUTO_FIX or "judged_on_held_out" in entry:
        return
    if entry.get("status") != VariantStatus.DONE or entry.get("verdict_reason"):
        return
    parent = Variant.from_dict(run.report.variant(entry["parent"])) if entry.get("parent") else None
    search = None if parent is None else parent.fix_search
    if search is None or not search.held_out_rows:
        return
    agree = written_agreement(run, spec)[np.asarray(search.held_out_rows, dtype=np.int64)]
    n, agreeing = int(agree.size), int(agree.sum())
    low, high = wilson_interval(agreeing, n)
    pct = 100.0 * agreeing / n
    ci = (100.0 * low, 100.0 * high)
    passed = meets_threshold(pct, ci, run.job.min_agreement_pct, run.job.verdict)
    judged = HeldOutJudgement(
        n=n, agreeing=agreeing, top1_agreement_pct=pct, top1_agreement_ci95=ci, passed=passed
    )
    run.report.set_part(spec.name, "judged_on_held_out", judged)
    run.report.set_result(spec.name, passed=passed)
    run.report.save()
