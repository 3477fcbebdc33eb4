"""The ladder's last rung in a run: which layers to keep in float, searched on the selection
images within what is left of the budget.

The measured sensitivity scan and the greedy walk (core.engine.fixes.keep_float) run here on
this machine, or on --engine ray each candidate made and measured as a Ray task on the same
images (core.engine.ray_engine.keep_float_candidates), so local and Ray runs reach the same
result for one budget.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from core.engine.fixes.candidate import Progress, first_line, skipped
from core.engine.fixes.keep_float import Measurement
from core.engine.fixes.search import Budget
from core.engine.fixes.selection import SelectionBench
from core.engine.fixes.verdict import meets_bar
from core.errors import ConversionFailed, QuantLensError
from core.reporting.sections.fixes import CandidateStatus, FixCandidate
from core.types import VariantSpec

KIND = "keep_float"


@dataclass(frozen=True)
class KeepFloatResult:
    """What the rung found: the record for the parent's `auto_fix` (`sensitivity`, `steps`;
    empty when the scan never ran) and the candidates (one per kept greedy step, else one
    skipped or failed with its reason)."""

    recorded: dict[str, Any]
    candidates: list[FixCandidate]


def keep_float_rung(
    bench: SelectionBench,
    spec: VariantSpec,
    budget: Budget,
    parent: Measurement,
    progress: Progress,
) -> KeepFloatResult:
    """The sensitivity scan and the greedy walk for `spec` on the selection images."""
    from core.engine.diagnose import LAYERS_SUFFIX, statistic_ranks
    from core.engine.fixes import keep_float
    from core.inputs import rundir
    from core.reporting.report import counted

    run = bench.run
    table = rundir.variant_file(run.run_dir, spec, LAYERS_SUFFIX)
    if not table.is_file():
        return KeepFloatResult(
            {}, [skipped(spec, KIND, "no per-layer statistics to propose layers")]
        )
    ranks = statistic_ranks(table)  # the Layers page's ranking, recorded as `stat_rank`
    scan_count = min(keep_float.SCAN_CANDIDATES, max(budget.left - 1, 0))
    candidates = list(ranks)[:scan_count]
    if len(ranks) > scan_count and scan_count < keep_float.SCAN_CANDIDATES:
        budget.truncated = True
    if not candidates:
        budget.truncated = True  # the ladder ran out of evaluations before this rung
        return KeepFloatResult({}, [skipped(spec, KIND, "the evaluation budget ran out")])
    search = _search_on_ray if run.job.engine == "ray" else _search_here
    try:
        scan, steps = search(bench, spec, candidates, ranks, budget, parent, progress)
    except QuantLensError as exc:
        failed = FixCandidate(
            kind=KIND,
            variant=None,
            parent=spec.name,
            fix={"kind": KIND},
            status=CandidateStatus.FAILED,
            reason=first_line(exc),
        )
        return KeepFloatResult({}, [failed])
    found = [
        FixCandidate(
            kind=KIND,
            variant=replace(spec, float_layers=tuple(step["layers"])).name,
            parent=spec.name,
            fix={"kind": KIND, "layers": list(step["layers"])},
            status=CandidateStatus.MEASURED,
            agreement_pct=step["agreement_pct"],
            n=step["n"],
            mean_kl=step["mean_kl"] if np.isfinite(step["mean_kl"]) else None,
            size_bytes=step["size_bytes"],
            integer_only=False,  # a layer kept in float computes in float
            meets_bar=bool(step["meets_threshold"]),
        )
        for step in steps
        if step["kept"]  # a step not kept made the model worse; `steps` records it
    ]
    recorded = {
        "candidates_by": f"the per-layer statistics ({table.name})",
        "ranked_by": "measured mean KL with one layer in float, then agreement",
        "walk": "each ranked layer added in turn and kept unless agreement falls (or holds "
        "with a higher mean KL) on the selection images",
        "scan_images": len(bench.rows),
        "sensitivity": scan,
        "steps": steps,
    }
    if not found:  # every step made the model worse: say so rather than stay silent
        reason = f"no layer kept in float improved the model ({counted(len(steps), 'step')} tried)"
        return KeepFloatResult(recorded, [skipped(spec, KIND, reason)])
    return KeepFloatResult(recorded, found)


def _greedy_budget(budget: Budget, ranked: list[str]) -> list[str]:
    """The ranked layers the greedy walk may still try: one evaluation each."""
    allowed = max(budget.left, 0)
    if len(ranked) > allowed:
        budget.truncated = True
    budget.used += min(len(ranked), allowed)  # charged up front; refunded below
    return ranked[:allowed]


def _refund(budget: Budget, charged: int, steps: list[dict[str, Any]]) -> None:
    budget.used -= charged - len(steps)


Found = tuple[list[dict[str, Any]], list[dict[str, Any]]]  # (the scan, the greedy steps)


def _search_here(
    bench: SelectionBench,
    spec: VariantSpec,
    candidates: list[str],
    ranks: dict[str, int],
    budget: Budget,
    parent: Measurement,
    progress: Progress,
) -> Found:
    """The scan and the greedy walk on this machine, on the selection images."""
    from core.engine.fixes import keep_float
    from core.engine.stages.diagnose import float_tflite

    run = bench.run
    assert bench.reference.calibration is not None  # checked before the search starts
    make = keep_float.keep_float_maker(
        run.model,
        spec,
        calibration=bench.reference.calibration,
        route=run.report.variant(spec.name).get("conversion_route") or "",
        float_tflite=float_tflite(run),
    )
    budget.used += len(candidates)
    scan = keep_float.sensitivity_scan(
        make, bench.measure, candidates, progress=progress, stat_ranks=ranks
    )
    ranked = _greedy_budget(budget, [m["layer"] for m in scan])
    steps = keep_float.greedy_fix(
        make,
        bench.measure,
        ranked,
        parent=parent,
        max_layers=int(run.job.auto_fix or 0),
        meets=lambda m: meets_bar(run.job, m),
        progress=progress,
    )
    _refund(budget, len(ranked), steps)
    return scan, steps


def _search_on_ray(
    bench: SelectionBench,
    spec: VariantSpec,
    candidates: list[str],
    ranks: dict[str, int],
    budget: Budget,
    parent: Measurement,
    progress: Progress,
) -> Found:
    """The same scan and greedy walk, each candidate made and run as a Ray task on the
    selection images. The scan's candidates run side by side; the greedy steps one after
    another (each depends on whether the previous one was kept)."""
    from core.engine import ray_engine
    from core.engine.fixes import keep_float
    from core.engine.stages.diagnose import float_tflite, row_samples
    from core.engine.stages.measure import measurement
    from core.engine.stages.ray_evaluate import reference_source

    run, reference = bench.run, bench.reference
    assert reference.calibration is not None  # checked before the search starts
    source = ray_engine.KeepFloatSource(
        reference=reference_source(run),
        spec=spec,
        route=run.report.variant(spec.name).get("conversion_route") or "",
        calibration=reference.calibration,
        float_tflite=float_tflite(run),
    )
    samples = row_samples(run, reference)
    selected = [samples[p] for p in bench.rows]

    def measured(layer_sets: list[tuple[str, ...]]) -> Callable[[bytes], Measurement]:
        found = ray_engine.keep_float_candidates(
            source,
            layer_sets,
            selected,
            preset=run.job.preset,
            image_shape=run.image_shape,
            address=run.job.ray_address,
        )
        by_key = {_key(c.layers): c for c in found}

        def lookup(key: bytes) -> Measurement:
            candidate = by_key[key]
            if candidate.outputs is None:
                raise ConversionFailed(candidate.error or "the candidate could not be made")
            return measurement(reference, candidate.outputs, candidate.size_bytes, rows=bench.rows)

        return lookup

    progress(0.0, f"sensitivity: {len(candidates)} layers, one at a time, as Ray tasks")
    budget.used += len(candidates)
    scan = keep_float.sensitivity_scan(
        _key,
        measured([(layer,) for layer in candidates]),
        candidates,
        progress=progress,
        stat_ranks=ranks,
    )
    ranked = _greedy_budget(budget, [m["layer"] for m in scan])
    progress(0.5, "auto-fix: each step as a Ray task")

    def one_step(key: bytes) -> Measurement:
        return measured([tuple(key.decode().split("\n"))])(key)

    steps = keep_float.greedy_fix(
        _key,
        one_step,
        ranked,
        parent=parent,
        max_layers=int(run.job.auto_fix or 0),
        meets=lambda m: meets_bar(run.job, m),
        progress=progress,
    )
    _refund(budget, len(ranked), steps)
    return scan, steps


def _key(layers: tuple[str, ...]) -> bytes:
    """A candidate's stand-in for its `.tflite` in keep_float's search (the task made it)."""
    return "\n".join(sorted(layers)).encode()
