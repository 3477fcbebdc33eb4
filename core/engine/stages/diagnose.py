"""The diagnose stage (issue 12): per-layer error of each finished quantized variant, then
`--auto-fix` for the ones below the bar, with a measured search whose result joins the run as
a derived variant (converted, evaluated and diagnosed here; timed with the others).

Writes <variant>.layers.csv, each variant's `diagnosis` and `auto_fix` in report.json, and the
derived variants' usual files. Reads the variants' .tflite and the decoded images, so it works
whichever engine evaluated them. A restarted worker skips what report.json says is done.

On --engine ray the head diagnoses (decoding the few flipped images itself), the search's
candidates are made and measured as Ray tasks (core.engine.ray_engine.keep_float_candidates),
and the derived variant is evaluated on the cluster (stages.ray_evaluate).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from core.engine.convert import PROBE_IMAGES, ConversionResult
from core.engine.stages.context import RunContext
from core.engine.stages.convert import Conversion, convert_in_background
from core.engine.stages.decode import first_images
from core.engine.stages.evaluate import run_evaluation, written_agreement
from core.engine.stages.files import DecodedCache
from core.engine.stages.reference import ReferenceOutputs
from core.errors import ConversionFailed, QuantLensError
from core.inputs import rundir
from core.runfolder.protocol import DECODED_CACHE
from core.types import NEEDS_CALIBRATION, JobSpec, Mode, Sample, VariantSpec

if TYPE_CHECKING:
    from core.engine.selective import Measurement

DERIVED_BY_AUTO_FIX = "auto-fix"  # a variant entry's `derived_by`: added by --auto-fix
DIAGNOSIS_THREADS = 2  # quantizer variants diagnosed at once (the machines here have 2 cores)


def diagnose_variants(run: RunContext, reference: ReferenceOutputs) -> None:
    """Diagnose every finished variant that has per-layer statistics and no diagnosis yet, now
    when diagnose_now says so; the others are marked to be diagnosed on request.

    Quantizer variants are diagnosed up to DIAGNOSIS_THREADS at a time, never more than the
    run's --threads: each diagnosis runs its models on one LiteRT thread, and LiteRT's invoke
    and numpy's array work release the GIL (on MobileNetV2-224 three variants took 13.0 s one
    after another, 9.8 s two at a time). Converter variants run
    the QuantizationDebugger, a TensorFlow conversion, one at a time alongside. Results are
    recorded in variant order on this thread, which alone writes report.json.

    On --engine ray too: the diagnosis reads at most core.engine.diagnose.MAX_IMAGES flipped
    images, which the head decodes from the data set (stages.ray_evaluate keeps no cache).
    """
    from concurrent.futures import ThreadPoolExecutor

    from core.reporting.report import defer_diagnosis
    from core.types import Backend

    pending = [spec for spec in run.specs if needs_diagnosis(run, spec)]
    if reference.calibration is None or not pending:
        return
    later = [spec for spec in pending if not diagnose_now(run, spec)]
    for spec in later:
        defer_diagnosis(run.report.data, spec.name)
    if later:
        run.report.save()
    pending = [spec for spec in pending if spec not in later]
    if not pending:
        return
    float_model = float_tflite(run)
    with ThreadPoolExecutor(max_workers=max(1, min(DIAGNOSIS_THREADS, run.threads))) as pool:
        found = {
            spec.name: pool.submit(_diagnosis, run, reference, spec, float_model)
            for spec in pending
            if spec.backend is Backend.QUANTIZER
        }
        for spec in pending:
            if spec.name not in found:
                _record(run, spec, _diagnosis(run, reference, spec, float_model))
        for spec in pending:
            if spec.name in found:
                _record(run, spec, found[spec.name].result())


def needs_diagnosis(run: RunContext, spec: VariantSpec) -> bool:
    """A finished quantized variant not diagnosed yet (a restarted worker does not repeat one)."""
    from core.engine.diagnose import can_diagnose

    if not can_diagnose(spec) or run.report.variant(spec.name)["status"] != "done":
        return False
    return spec.name not in (run.report.data.get("diagnosis") or {})


def diagnose_now(run: RunContext, spec: VariantSpec) -> bool:
    """Whether a variant that needs a diagnosis gets it in this run: when it flipped an image
    (the diagnosis explains the flip; auto-fix starts from it), or when the Layers page or
    `export` asked for it. One that flipped none waits to be asked (about 11 s of a MobileNetV2
    run went to diagnosing variants that agree on every image). On --engine ray every one is
    diagnosed now: a run evaluated on a cluster cannot be re-opened."""
    from core.reporting.report import DIAGNOSIS_ON_REQUEST, ON_REQUEST_ASKED

    if run.job.engine == "ray":
        return True
    entry = run.report.variant(spec.name)
    if entry.get(DIAGNOSIS_ON_REQUEST) == ON_REQUEST_ASKED or entry.get("derived_by"):
        return True  # asked for; or made on the Layers page, or by auto-fix, to be looked at
    if run.job.auto_fix and auto_fix_applies(spec, entry, run.job):
        return True  # below a lower-bound bar with no flip: the search starts from the table
    return not bool(written_agreement(run, spec).all())


def diagnose_finished(run: RunContext, reference: ReferenceOutputs, spec: VariantSpec) -> None:
    """Per-layer error of a finished quantized variant: `<variant>.layers.csv` and the entry's
    `diagnosis`. A diagnosis that fails is a warning; the variant's results stand."""
    if reference.calibration is None:
        return
    _record(run, spec, _diagnosis(run, reference, spec, float_tflite(run)))


@dataclass(frozen=True)
class _Diagnosis:
    """What diagnosing one variant found, before it is recorded in report.json."""

    summary: dict[str, Any] | None  # the entry's `diagnosis`; None when it failed
    warnings: list[str]


def _diagnosis(
    run: RunContext, reference: ReferenceOutputs, spec: VariantSpec, float_model: bytes
) -> _Diagnosis:
    """Diagnose one variant and write its files; reads report.json, never writes it (this may
    run on a thread of diagnose_variants)."""
    from core.engine.diagnose import LAYERS_SUFFIX, diagnose_variant

    assert reference.calibration is not None  # checked by both callers
    name = spec.name
    flipped = images_at(run, reference, np.flatnonzero(~written_agreement(run, spec)))
    try:
        summary = diagnose_variant(
            run.model,
            spec,
            rundir.tflite_path(run.run_dir, spec).read_bytes(),
            float_tflite=float_model,
            route=run.report.variant(name).get("conversion_route") or "",
            calibration=reference.calibration,
            flipped=flipped,
            out_csv=rundir.variant_file(run.run_dir, spec, LAYERS_SUFFIX),
            progress=lambda f, msg: run.emit("diagnose", f, msg, name),
        )
    except (QuantLensError, ValueError, RuntimeError, OSError) as exc:
        return _Diagnosis(None, [f"no per-layer diagnosis: {_first_line(exc)}"])
    details, warning = write_layer_details(run, spec, flipped, reference.calibration, float_model)
    summary["details"] = details
    return _Diagnosis(summary, [warning] if warning else [])


def _record(run: RunContext, spec: VariantSpec, found: _Diagnosis) -> None:
    from core.reporting.report import record_diagnosis

    run.report.variant(spec.name)["warnings"].extend(found.warnings)
    record_diagnosis(run.report.data, spec.name, found.summary)
    run.report.save()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def write_layer_details(
    run: RunContext,
    spec: VariantSpec,
    flipped: np.ndarray,
    calibration: np.ndarray,
    float_model: bytes,
) -> tuple[str | None, str | None]:
    """`<variant>.layer_details.json` (core.engine.layer_details) for every op of its table, on
    the flipped images (the calibration images when it flipped none): its file name, or None
    and a warning when it cannot be made (the diagnosis stands)."""
    import csv
    import json

    from core.engine.diagnose import LAYERS_SUFFIX, MAX_IMAGES
    from core.engine.layer_details import DETAILS_SUFFIX, layer_details

    name = spec.name
    run.emit("diagnose", 0.9, f"{name}: weight ranges and activation histograms", name)
    with rundir.variant_file(run.run_dir, spec, LAYERS_SUFFIX).open(encoding="utf-8") as f:
        rows = [(int(r["order"]), r["tensor_name"]) for r in csv.DictReader(f)]
    images, images_are = (
        (flipped, "flipped") if len(flipped) else (calibration[:MAX_IMAGES], "calibration")
    )
    try:
        details = layer_details(
            float_model,
            rundir.tflite_path(run.run_dir, spec).read_bytes(),
            rows,
            images,
            images_are=images_are,
        )
    except (QuantLensError, ValueError, RuntimeError, OSError) as exc:
        return None, f"no layer details: {_first_line(exc)}"
    target = rundir.variant_file(run.run_dir, spec, DETAILS_SUFFIX)
    rundir.write_atomic(target, json.dumps(details).encode("utf-8"))
    return target.name, None


def auto_fix(run: RunContext, reference: ReferenceOutputs) -> RunContext:
    """`--auto-fix K`: each judged variant below the bar that can keep layers in float gets a
    measured sensitivity scan, a greedy fix, and the result as a derived variant.

    Returns the context with the derived variants among its specs, so the time stage times them.
    """
    if not run.job.auto_fix:
        return run
    _note_nothing_to_fix(run)
    todo = [s for s in run.specs if auto_fix_applies(s, run.report.variant(s.name), run.job)]
    if not todo:
        return run
    with _cluster_session(run):  # on --engine ray, one session for every scan and fix
        for spec in todo:
            derived = _auto_fix_variant(run, reference, spec)
            if derived is not None:
                run = replace(run, specs=(*run.specs, derived))
                _convert_and_evaluate(run, reference, derived)
    return run


def _cluster_session(run: RunContext) -> AbstractContextManager[object]:
    if run.job.engine != "ray":
        return nullcontext()
    from core.engine import ray_engine

    return ray_engine.job_session(run.job)


def auto_fix_applies(spec: VariantSpec, entry: dict[str, Any], job: JobSpec) -> bool:
    """Whether `--auto-fix` works on this variant: a finished, judged variant without overrides,
    below the bar (not for want of a verdict), on a mode that can keep layers in float."""
    return _fixable(spec, entry) and not _entry_meets_bar(entry, job)


def _fixable(spec: VariantSpec, entry: dict[str, Any]) -> bool:
    """A finished, judged variant the user selected, without overrides, not fixed yet, on a mode
    that can keep layers in float."""
    from core.reporting.report import ROLE_SELECTED

    if spec.float_layers or spec.int16_layers or entry.get("auto_fix") is not None:
        return False
    if entry.get("role") != ROLE_SELECTED or entry.get("status") != "done":
        return False
    if entry.get("verdict_reason") or entry.get("top1_agreement_pct") is None:
        return False
    try:
        replace(spec, float_layers=("any",)).check()
    except QuantLensError:
        return False
    return True


def _entry_meets_bar(entry: dict[str, Any], job: JobSpec) -> bool:
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
            entry["auto_fix"] = {
                "nothing_to_fix": f"{spec.name} meets {run.job.min_agreement_pct:g} %{bound}, "
                "nothing to fix"
            }
            noted = True
    if noted:
        run.report.save()


def _auto_fix_variant(
    run: RunContext, reference: ReferenceOutputs, spec: VariantSpec
) -> VariantSpec | None:
    """Scan and fix one variant; records `auto_fix` on its entry and, when the fix is a new
    variant, adds its pending entry to report.json and returns its spec."""
    from core.engine import selective
    from core.engine.diagnose import LAYERS_SUFFIX, statistic_ranks
    from core.reporting.report import ROLE_SELECTED, chosen_step, pending_variant

    name = spec.name
    entry = run.report.variant(name)
    table = rundir.variant_file(run.run_dir, spec, LAYERS_SUFFIX)
    if not table.is_file() or reference.calibration is None:
        entry["auto_fix"] = {"error": "no per-layer statistics to propose candidates from"}
        run.report.save()
        return None

    def progress(fraction: float, message: str) -> None:
        run.emit("auto-fix", fraction, f"{name}: {message}", name)

    ranks = statistic_ranks(table)  # the Layers page's ranking, recorded as `stat_rank`
    candidates = list(ranks)[: selective.SCAN_CANDIDATES]
    search = _search_on_ray if run.job.engine == "ray" else _search_here
    try:
        scan, steps = search(run, reference, spec, candidates, ranks, progress)
    except QuantLensError as exc:
        entry["auto_fix"] = {"error": str(exc)}
        run.report.save()
        return None
    chosen = chosen_step(steps)
    derived = None if chosen is None else replace(spec, float_layers=tuple(chosen["layers"]))
    entry["auto_fix"] = {
        "candidates_by": f"the per-layer statistics ({table.name})",
        "ranked_by": "measured mean KL with one layer in float, then agreement",
        "search": "each ranked layer added in turn and kept unless agreement falls (or holds "
        "with a higher mean KL) on every evaluated image",
        "scan_images": min(selective.SCAN_IMAGES, len(reference)),
        "sensitivity": scan,
        "steps": steps,
        "variant": None if derived is None else derived.name,
    }
    if derived is None or any(v["name"] == derived.name for v in run.report.data["variants"]):
        run.report.save()
        return None
    # Saved before any work on it: a restarted worker re-adds it to the job (stages.start).
    run.report.data["variants"].append(
        {**pending_variant(derived, role=ROLE_SELECTED), "derived_by": DERIVED_BY_AUTO_FIX}
    )
    run.report.save()
    return derived


Progress = Callable[[float, str], None]
Search = tuple[list[dict[str, Any]], list[dict[str, Any]]]  # (sensitivity scan, greedy steps)


def _search_here(
    run: RunContext,
    reference: ReferenceOutputs,
    spec: VariantSpec,
    candidates: list[str],
    ranks: dict[str, int],
    progress: Progress,
) -> Search:
    """The scan and the greedy fix on this machine, on the decoded-image cache."""
    from core.engine import selective

    assert reference.calibration is not None  # checked by the caller
    make = selective.keep_float_maker(
        run.model,
        spec,
        calibration=reference.calibration,
        route=run.report.variant(spec.name).get("conversion_route") or "",
        float_tflite=float_tflite(run),
    )
    scan = selective.sensitivity_scan(
        make,
        lambda t: measure_tflite(run, reference, t, limit=selective.SCAN_IMAGES),
        candidates,
        progress=progress,
        stat_ranks=ranks,
    )
    steps = selective.greedy_fix(
        make,
        lambda t: measure_tflite(run, reference, t, limit=None),
        [m["layer"] for m in scan],
        parent=parent_measurement(run.report.variant(spec.name)),
        max_layers=int(run.job.auto_fix or 0),
        meets=lambda m: _meets_bar(run.job, m),
        progress=progress,
    )
    return scan, steps


def _search_on_ray(
    run: RunContext,
    reference: ReferenceOutputs,
    spec: VariantSpec,
    candidates: list[str],
    ranks: dict[str, int],
    progress: Progress,
) -> Search:
    """The same scan and greedy fix, each candidate made and run as a Ray task.

    The scan's candidates run side by side. The greedy fix's steps run one after another (each
    step's layers depend on whether the previous one was kept), each as a Ray task. The head
    ranks and picks with selective's own functions, the measurements computed as
    measure_tflite does. The scan has no time budget here: it runs in parallel.
    """
    from core.engine import ray_engine, selective
    from core.engine.stages.ray_evaluate import reference_source

    assert reference.calibration is not None  # checked by the caller
    source = ray_engine.KeepFloatSource(
        reference=reference_source(run),
        spec=spec,
        route=run.report.variant(spec.name).get("conversion_route") or "",
        calibration=reference.calibration,
        float_tflite=float_tflite(run),
    )
    rows = row_samples(run, reference)

    def measured_on(
        count: int, layer_sets: list[tuple[str, ...]]
    ) -> Callable[[bytes], Measurement]:
        found = ray_engine.keep_float_candidates(
            source,
            layer_sets,
            rows[:count],
            preset=run.job.preset,
            image_shape=run.image_shape,
            address=run.job.ray_address,
        )
        by_key = {_key(c.layers): c for c in found}

        def lookup(key: bytes) -> Measurement:
            candidate = by_key[key]
            if candidate.outputs is None:
                raise ConversionFailed(candidate.error or "the candidate could not be made")
            return measurement(reference, candidate.outputs, candidate.size_bytes)

        return lookup

    progress(0.0, f"sensitivity: {len(candidates)} layers, one at a time, as Ray tasks")
    scan_images = min(selective.SCAN_IMAGES, len(rows))
    scan = selective.sensitivity_scan(
        _key,
        measured_on(scan_images, [(layer,) for layer in candidates]),
        candidates,
        progress=progress,
        budget_s=float("inf"),
        stat_ranks=ranks,
    )
    ranked = [m["layer"] for m in scan]
    progress(0.5, "auto-fix: each step as a Ray task")

    def one_step(key: bytes) -> Measurement:
        return measured_on(len(rows), [tuple(key.decode().split("\n"))])(key)

    steps = selective.greedy_fix(
        _key,
        one_step,
        ranked,
        parent=parent_measurement(run.report.variant(spec.name)),
        max_layers=int(run.job.auto_fix or 0),
        meets=lambda m: _meets_bar(run.job, m),
        progress=progress,
    )
    return scan, steps


def _key(layers: tuple[str, ...]) -> bytes:
    """A candidate's stand-in for its `.tflite` in selective's search (the task made it)."""
    return "\n".join(sorted(layers)).encode()


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


def _meets_bar(job: JobSpec, measured: Measurement) -> bool:
    """The verdict rule of the job, applied to a measurement (its Wilson interval recomputed)."""
    from core.metrics.agreement import wilson_interval
    from core.reporting.report import meets_threshold

    agreeing = round(measured.agreement_pct * measured.n / 100.0)
    low, high = wilson_interval(agreeing, measured.n)
    return meets_threshold(
        measured.agreement_pct, (100.0 * low, 100.0 * high), job.min_agreement_pct, job.verdict
    )


def parent_measurement(entry: dict[str, Any]) -> Measurement:
    """The parent variant as auto-fix's search starts from it: its own evaluation, which is the
    measurement `measure_tflite(limit=None)` would repeat."""
    from core.engine.selective import Measurement

    kl = entry.get("mean_kl")
    return Measurement(
        agreement_pct=float(entry["top1_agreement_pct"]),
        # No finite KL (NaN outputs): any candidate with one is better.
        mean_kl=float(kl) if kl is not None and np.isfinite(kl) else float("inf"),
        size_bytes=int(entry["size_bytes"]),
        n=int(entry["n"]),
    )


def measure_tflite(
    run: RunContext, reference: ReferenceOutputs, tflite: bytes, *, limit: int | None
) -> Measurement:
    """Agreement and mean KL of a model against the original on the first `limit` evaluation
    images (all of them when None), read from the run's decoded-image cache."""
    from core.engine.runtime import TFLiteRunner, evaluation_batch
    from core.inputs.presets import apply_preset

    batch = evaluation_batch(int(np.prod(run.image_shape)))
    model = TFLiteRunner(tflite, threads=run.threads, name="candidate", batch=batch)
    cache = DecodedCache(run.run_dir / DECODED_CACHE, run.image_shape)
    total = len(cache) if limit is None else min(limit, len(cache))
    outputs: list[np.ndarray] = []
    done = 0
    for pixels in cache.batches():
        chunk = pixels[: total - done]
        outputs.append(model.run_batch(apply_preset(chunk, run.job.preset)))
        done += len(chunk)
        if done >= total:
            break
    return measurement(reference, np.concatenate(outputs), len(tflite))


def measurement(reference: ReferenceOutputs, outputs: np.ndarray, size_bytes: int) -> Measurement:
    """Agreement and mean KL of a model's raw outputs on the first len(outputs) rows."""
    from core.engine.selective import Measurement
    from core.metrics.agreement import sample_records, to_probabilities

    total = len(outputs)
    probs = to_probabilities(outputs, softmax=reference.softmax)
    records = sample_records(reference.prob_rows(0, total), probs)
    kl = records.kl[np.isfinite(records.kl)]
    return Measurement(
        agreement_pct=float(100.0 * records.agree.mean()),
        mean_kl=float(kl.mean()) if kl.size else float("inf"),
        size_bytes=size_bytes,
        n=total,
    )


def float_tflite(run: RunContext) -> bytes:
    """The float32 TFLite model the quantizer starts from: the pivot's file when it exists."""
    from core.engine.backends import tflite_from_reference

    float32 = VariantSpec(mode=Mode.FLOAT32)
    pivot = rundir.tflite_path(run.run_dir, float32)
    if pivot.is_file():
        return pivot.read_bytes()
    return tflite_from_reference(
        run.model, float32, model_sha256=run.model_sha, cache_dir=run.cache_dir
    ).tflite


def images_at(run: RunContext, reference: ReferenceOutputs, positions: np.ndarray) -> np.ndarray:
    """Preprocessed evaluation images (float32 [N,H,W,C]) by their row positions, at most
    core.engine.diagnose.MAX_IMAGES of them: from the decoded-image cache, or on --engine ray
    (whose head caches only the probe images) decoded from the data set by the same decoder."""
    from core.engine.diagnose import MAX_IMAGES
    from core.inputs.presets import apply_preset

    chosen = [int(p) for p in positions[:MAX_IMAGES]]
    if not chosen:
        return np.zeros((0, *run.image_shape), dtype=np.float32)
    if run.job.engine == "ray":
        rows = row_samples(run, reference)
        pixels = np.stack([_decode(run, rows[p]) for p in chosen])
    else:
        cache = DecodedCache(run.run_dir / DECODED_CACHE, run.image_shape)
        pixels = np.stack([cache.read(p) for p in chosen])
    return apply_preset(pixels, run.job.preset).astype(np.float32)


def row_samples(run: RunContext, reference: ReferenceOutputs) -> list[Sample]:
    """The evaluated samples in row (samples.csv) order."""
    by_index = {s.index: s for s in run.dataset.samples}
    return [by_index[i] for i in reference.sample_indices]


def _decode(run: RunContext, sample: Sample) -> np.ndarray:
    from core.inputs.images import decode_image

    height, width, channels = run.image_shape
    return decode_image(sample.path, height=height, width=width, channels=channels)
