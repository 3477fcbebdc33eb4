"""The auto-fix stage: the fix ladder (core.engine.fixes) for each judged variant below the bar.

For each such variant: the evaluation images are split by the run's seed into images that
select a fix and images that judge it (core.engine.fixes.search); each rung of the ladder,
cheapest first (equalization, 16-bit activations for the culprit chain, layers kept in float),
is made as a real `.tflite` and measured on the selection images, up to `--fix-budget`
candidate evaluations; the cheapest rung that meets the bar (else the best so far) joins the
run as a derived variant, converted and evaluated like any other, timed with the others, and
its verdict is taken on the held-out images only.

Writes each variant's `auto_fix` (the search, typed through core.reporting.runmodel) and the
derived variants' files and entries. On --engine ray the keep-float candidates run as Ray
tasks (core.engine.ray_engine.keep_float_candidates) and the other rungs are measured on the
head on the same decoded pixels, so local and Ray runs reach the same result for one budget.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from core.engine.convert import PROBE_IMAGES, ConversionResult
from core.engine.fixes.ladder import Rung, ladder
from core.engine.fixes.search import DEFAULT_BUDGET, Budget, Split, choose, pareto, split_rows
from core.engine.stages.context import RunContext
from core.engine.stages.convert import Conversion, convert_in_background
from core.engine.stages.decode import first_images
from core.engine.stages.diagnose import (
    diagnose_finished,
    float_tflite,
    needs_diagnosis,
    row_samples,
)
from core.engine.stages.evaluate import run_evaluation, written_agreement
from core.engine.stages.measure import measure_tflite, measurement
from core.engine.stages.reference import ReferenceOutputs
from core.errors import ConversionFailed, QuantLensError
from core.inputs import rundir
from core.reporting.sections.fixes import CandidateStatus, FixCandidate, FixSearch, HeldOutJudgement
from core.reporting.sections.variant import Variant
from core.types import NEEDS_CALIBRATION, JobSpec, VariantSpec, VariantStatus

if TYPE_CHECKING:
    from core.engine.fixes.keep_float import Measurement

DERIVED_BY_AUTO_FIX = "auto-fix"  # a variant entry's `derived_by`: added by --auto-fix
CANDIDATE_LATENCY_RUNS = 20  # batch-1 invocations timed per measured candidate (p50 only)
Progress = Callable[[float, str], None]


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
                derived = _auto_fix_variant(run, reference, spec)
                if derived is not None:
                    run = replace(run, specs=(*run.specs, derived))
                    _convert_and_evaluate(run, reference, derived)
    # Every derived fix is judged on its held-out images, including one a restarted worker
    # evaluated with the other pending variants.
    for spec in run.specs:
        _judge_on_held_out(run, spec)
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


# -- measuring candidates on the selection images ----------------------------------------------


class _Bench:
    """Measures a candidate `.tflite` on the selection rows: from the decoded-image cache, or
    on --engine ray (no cache on the head) on the same images decoded once by the same decoder."""

    def __init__(self, run: RunContext, reference: ReferenceOutputs, rows: Sequence[int]) -> None:
        self.run, self.reference, self.rows = run, reference, tuple(rows)
        self._pixels: np.ndarray | None = None

    def measure(self, tflite: bytes) -> Measurement:
        if self.run.job.engine != "ray":
            return measure_tflite(self.run, self.reference, tflite, rows=self.rows)
        from core.engine.runtime import TFLiteRunner

        model = TFLiteRunner(
            tflite, threads=self.run.threads, name="candidate", preset=self.run.job.preset
        )
        outputs = model.infer(self.pixels())  # one image per invoke, the preset applied
        return measurement(self.reference, outputs, len(tflite), rows=self.rows)

    def pixels(self) -> np.ndarray:
        """The selection images as decoded (uint8), on --engine ray decoded here once."""
        from core.engine.stages.diagnose import decode_sample

        if self._pixels is None:
            samples = row_samples(self.run, self.reference)
            self._pixels = np.stack([decode_sample(self.run, samples[p]) for p in self.rows])
        return self._pixels


def _p50_ms(tflite: bytes, image_shape: tuple[int, int, int]) -> float:
    """A candidate's median single-image latency on one thread (a quick look for the Pareto
    set; the derived variant is timed by the time stage with the full protocol)."""
    from core.engine.runtime import TFLiteRunner
    from core.engine.timing import time_invocations

    model = TFLiteRunner(tflite, threads=1, name="candidate")
    invoke = model.timed_invoke(np.zeros(image_shape, dtype=np.float32))
    times = time_invocations(invoke, runs=CANDIDATE_LATENCY_RUNS, warmup=3)
    return float(np.median(times))


# -- the search ---------------------------------------------------------------------------------


def _auto_fix_variant(
    run: RunContext, reference: ReferenceOutputs, spec: VariantSpec
) -> VariantSpec | None:
    """Walk the ladder for one variant; records `auto_fix` on its entry and, when a candidate
    was measured, adds the chosen one's pending entry to report.json and returns its spec."""
    from core.reporting.report import ROLE_SELECTED, pending_variant

    name = spec.name
    entry = run.report.variant(name)
    if reference.calibration is None:
        run.report.set_part(name, "auto_fix", {"error": "no calibration images to make a fix with"})
        run.report.save()
        return None
    try:
        split = split_rows(len(reference), run.job.seed)
    except ValueError as exc:
        run.report.set_part(name, "auto_fix", {"error": str(exc)})
        run.report.save()
        return None

    def progress(fraction: float, message: str) -> None:
        run.emit("auto-fix", fraction, f"{name}: {message}", name)

    integer_only = run.job.fix == "integer-only"
    budget = Budget(run.job.fix_budget or DEFAULT_BUDGET)
    bench = _Bench(run, reference, split.selected)
    causes = Variant.from_dict(entry).causes
    # The parent on the same images (free: no candidate), the floor a best-so-far must beat.
    parent = bench.measure(rundir.tflite_path(run.run_dir, spec).read_bytes())
    candidates: list[FixCandidate] = []
    for rung in ladder(spec, causes):
        if integer_only and rung.spec is not None and not rung.integer_only:
            reason = f"--fix integer-only: {rung.kind} computes in float"
            candidates.append(_skipped(spec, rung.kind, reason))
            continue
        candidates.append(_try_rung(run, reference, spec, rung, bench, budget, progress))
    keep_float: dict[str, Any] = {}
    if integer_only:
        reason = "--fix integer-only: layers kept in float leave integer-only targets"
        candidates.append(_skipped(spec, "keep_float", reason))
    else:
        keep_float, found = _keep_float_rung(
            run, reference, spec, bench, budget, split, parent, progress
        )
        candidates.extend(found)
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
    derived = (
        None if chosen is None or chosen.variant is None else VariantSpec.parse(chosen.variant)
    )
    if derived is None or derived.name in run.report.variant_names:
        run.report.save()
        return None
    # Saved before any work on it: a restarted worker re-adds it to the job (stages.start).
    run.report.put_variant(
        Variant.from_dict(pending_variant(derived, role=ROLE_SELECTED, parent=name))
    )
    run.report.set_part(derived.name, "derived_by", DERIVED_BY_AUTO_FIX)
    run.report.save()
    return derived


def _skipped(spec: VariantSpec, kind: str, reason: str) -> FixCandidate:
    return FixCandidate(
        kind=kind,
        variant=None,
        parent=spec.name,
        fix={"kind": kind},
        status=CandidateStatus.SKIPPED,
        reason=reason,
    )


def _try_rung(
    run: RunContext,
    reference: ReferenceOutputs,
    spec: VariantSpec,
    rung: Rung,
    bench: _Bench,
    budget: Budget,
    progress: Progress,
) -> FixCandidate:
    """Make one rung's variant and measure it (one evaluation of the budget); a rung that
    does not apply, cannot be made or is refused is recorded with its one-line reason."""
    from core.engine.backends import tflite_from_reference
    from core.engine.equalize import EqualizationError
    from core.engine.fixes.equalize_rung import EqualizationRefused
    from core.engine.flatbuffer import integer_only

    if rung.spec is None:
        return _skipped(spec, rung.kind, rung.reason or "does not apply")
    base = FixCandidate(
        kind=rung.kind,
        variant=rung.spec.name,
        parent=spec.name,
        fix=rung.fix,
        status=CandidateStatus.FAILED,
        note=rung.note,
    )
    if not budget.take():
        return replace(base, status=CandidateStatus.SKIPPED, reason="the evaluation budget ran out")
    progress(budget.used / max(budget.total, 1), f"fix ladder: {rung.kind} ({rung.spec.name})")
    fix = dict(rung.fix)
    try:
        if rung.kind == "equalize":
            fix = _verified_equalization(run, bench)
        tflite = tflite_from_reference(
            run.model,
            rung.spec,
            model_sha256=run.model_sha,
            calibration=reference.calibration,
            preset=run.job.preset,
            probe=first_images(run, PROBE_IMAGES),
            cache_dir=run.cache_dir,
        ).tflite
        measured = bench.measure(tflite)
    except EqualizationError as exc:  # nothing to pair, or the float model changed: no fix
        budget.used -= 1  # nothing was measured
        status = (
            CandidateStatus.REFUSED
            if isinstance(exc, EqualizationRefused)
            else CandidateStatus.SKIPPED
        )
        return replace(base, fix=fix, status=status, reason=_first_line(exc))
    except (QuantLensError, ValueError, RuntimeError) as exc:
        return replace(base, fix=fix, reason=_first_line(exc))
    return replace(
        base,
        fix=fix,
        status=CandidateStatus.MEASURED,
        agreement_pct=measured.agreement_pct,
        n=measured.n,
        mean_kl=measured.mean_kl if np.isfinite(measured.mean_kl) else None,
        size_bytes=measured.size_bytes,
        p50_ms=_p50_ms(tflite, run.image_shape),
        latency_runs=CANDIDATE_LATENCY_RUNS,
        integer_only=integer_only(tflite).integer_only,
        meets_bar=_meets_bar(run.job, measured),
    )


def _verified_equalization(run: RunContext, bench: _Bench) -> dict[str, Any]:
    """Equalize the Keras model and check the float result against the original on the
    selection images before it is quantized: the rung's typed `fix`, with that agreement and
    max |Δ output|.

    Raises:
        EqualizationError: no pairs (the reason), or the float model changed beyond tolerance.
    """
    from core.engine.fixes.equalize_rung import equalized_reference, verify

    assert bench.reference.calibration is not None
    equalized = equalized_reference(run.model, bench.reference.calibration)
    images = _selection_images(run, bench)
    checked = verify(run.model, equalized, images)
    fix = equalized.record.as_fix()
    fix.pop("float_top1_agreement", None)  # measured on the calibration images; these replace it
    fix.pop("float_max_abs_delta", None)
    return {
        **fix,
        "verified_on": "selection images",
        "verified_images": checked.images,
        "float_top1_agreement_pct": 100.0 * checked.top1_agreement,
        "float_max_abs_delta": checked.max_abs_delta,
    }


def _selection_images(run: RunContext, bench: _Bench) -> np.ndarray:
    """The selection images, preprocessed float32."""
    from core.engine.stages.files import DecodedCache
    from core.inputs.presets import apply_preset
    from core.runfolder.protocol import DECODED_CACHE

    if run.job.engine != "ray":
        cache = DecodedCache(run.run_dir / DECODED_CACHE, run.image_shape)
        pixels = np.stack([cache.read(p) for p in bench.rows])
    else:
        pixels = bench.pixels()
    return apply_preset(pixels, run.job.preset).astype(np.float32)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


# -- the last rung: layers kept in float ----------------------------------------------------------


def _keep_float_rung(
    run: RunContext,
    reference: ReferenceOutputs,
    spec: VariantSpec,
    bench: _Bench,
    budget: Budget,
    split: Split,
    parent: Measurement,
    progress: Progress,
) -> tuple[dict[str, Any], list[FixCandidate]]:
    """The measured sensitivity scan and greedy walk (core.engine.fixes.keep_float) on the
    selection images, within what is left of the budget: (`sensitivity`/`steps` for the
    entry's `auto_fix`, one candidate per kept greedy step; `steps` holds the others)."""
    from core.engine.diagnose import LAYERS_SUFFIX, statistic_ranks
    from core.engine.fixes import keep_float
    from core.reporting.report import counted

    table = rundir.variant_file(run.run_dir, spec, LAYERS_SUFFIX)
    if not table.is_file():
        return {}, [_skipped(spec, "keep_float", "no per-layer statistics to propose layers")]
    ranks = statistic_ranks(table)  # the Layers page's ranking, recorded as `stat_rank`
    scan_count = min(keep_float.SCAN_CANDIDATES, max(budget.left - 1, 0))
    candidates = list(ranks)[:scan_count]
    if len(ranks) > scan_count and scan_count < keep_float.SCAN_CANDIDATES:
        budget.truncated = True
    if not candidates:
        budget.truncated = True  # the ladder ran out of evaluations before this rung
        return {}, [_skipped(spec, "keep_float", "the evaluation budget ran out")]
    search = _search_on_ray if run.job.engine == "ray" else _search_here
    try:
        scan, steps = search(
            run, reference, spec, candidates, ranks, bench, budget, parent, progress
        )
    except QuantLensError as exc:
        failed = FixCandidate(
            kind="keep_float",
            variant=None,
            parent=spec.name,
            fix={"kind": "keep_float"},
            status=CandidateStatus.FAILED,
            reason=_first_line(exc),
        )
        return {}, [failed]
    found = [
        FixCandidate(
            kind="keep_float",
            variant=replace(spec, float_layers=tuple(step["layers"])).name,
            parent=spec.name,
            fix={"kind": "keep_float", "layers": list(step["layers"])},
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
        "scan_images": len(split.selected),
        "sensitivity": scan,
        "steps": steps,
    }
    if not found:  # every step made the model worse: say so rather than stay silent
        reason = f"no layer kept in float improved the model ({counted(len(steps), 'step')} tried)"
        return recorded, [_skipped(spec, "keep_float", reason)]
    return recorded, found


def _greedy_budget(budget: Budget, ranked: list[str]) -> list[str]:
    """The ranked layers the greedy walk may still try: one evaluation each."""
    allowed = max(budget.left, 0)
    if len(ranked) > allowed:
        budget.truncated = True
    budget.used += min(len(ranked), allowed)  # charged up front; refunded below
    return ranked[:allowed]


def _refund(budget: Budget, charged: int, steps: list[dict[str, Any]]) -> None:
    budget.used -= charged - len(steps)


def _search_here(
    run: RunContext,
    reference: ReferenceOutputs,
    spec: VariantSpec,
    candidates: list[str],
    ranks: dict[str, int],
    bench: _Bench,
    budget: Budget,
    parent: Measurement,
    progress: Progress,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The scan and the greedy walk on this machine, on the selection images."""
    from core.engine.fixes import keep_float

    assert reference.calibration is not None  # checked by the caller
    make = keep_float.keep_float_maker(
        run.model,
        spec,
        calibration=reference.calibration,
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
        meets=lambda m: _meets_bar(run.job, m),
        progress=progress,
    )
    _refund(budget, len(ranked), steps)
    return scan, steps


def _search_on_ray(
    run: RunContext,
    reference: ReferenceOutputs,
    spec: VariantSpec,
    candidates: list[str],
    ranks: dict[str, int],
    bench: _Bench,
    budget: Budget,
    parent: Measurement,
    progress: Progress,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The same scan and greedy walk, each candidate made and run as a Ray task on the
    selection images. The scan's candidates run side by side; the greedy steps one after
    another (each depends on whether the previous one was kept)."""
    from core.engine import ray_engine
    from core.engine.fixes import keep_float
    from core.engine.stages.ray_evaluate import reference_source

    assert reference.calibration is not None  # checked by the caller
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
        meets=lambda m: _meets_bar(run.job, m),
        progress=progress,
    )
    _refund(budget, len(ranked), steps)
    return scan, steps


def _key(layers: tuple[str, ...]) -> bytes:
    """A candidate's stand-in for its `.tflite` in keep_float's search (the task made it)."""
    return "\n".join(sorted(layers)).encode()


def _meets_bar(job: JobSpec, measured: Measurement) -> bool:
    """The verdict rule of the job, applied to a measurement (its Wilson interval recomputed)."""
    from core.metrics.agreement import wilson_interval
    from core.reporting.report import meets_threshold

    agreeing = round(measured.agreement_pct * measured.n / 100.0)
    low, high = wilson_interval(agreeing, measured.n)
    return meets_threshold(
        measured.agreement_pct, (100.0 * low, 100.0 * high), job.min_agreement_pct, job.verdict
    )


# -- the derived variant -------------------------------------------------------------------------


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


def _judge_on_held_out(run: RunContext, spec: VariantSpec) -> None:
    """A derived fix's verdict on the images its search did not see: `judged_on_held_out`
    (n, agreement, Wilson interval) and `passed` from it; its other metrics stay all-image.
    Does nothing for a variant that is no finished auto-fix result or is judged already."""
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
