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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.engine.stages.context import RunContext
from core.engine.stages.evaluate import written_agreement
from core.engine.stages.files import DecodedCache
from core.engine.stages.reference import ReferenceOutputs
from core.errors import QuantLensError
from core.inputs import rundir
from core.runfolder.protocol import DECODED_CACHE
from core.types import Mode, Sample, VariantSpec, VariantStatus

if TYPE_CHECKING:
    from core.engine.models import ReferenceModel

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

    from core.types import Backend

    pending = [spec for spec in run.specs if needs_diagnosis(run, spec)]
    if reference.calibration is None or not pending:
        return
    later = [spec for spec in pending if not diagnose_now(run, spec)]
    for spec in later:
        run.report.defer_diagnosis(spec.name)
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

    if not can_diagnose(spec) or run.report.variant(spec.name)["status"] != VariantStatus.DONE:
        return False
    return spec.name not in (run.report.read_only.get("diagnosis") or {})


def diagnose_now(run: RunContext, spec: VariantSpec) -> bool:
    """Whether a variant that needs a diagnosis gets it in this run: when it flipped an image
    (the diagnosis explains the flip; auto-fix starts from it), or when the Layers page or
    `export` asked for it, or the run was asked to fix (`--auto-fix`). One that flipped none
    waits to be asked (about 11 s of a MobileNetV2 run went to diagnosing variants that agree
    on every image). On --engine ray every one is diagnosed now: a run evaluated on a cluster
    cannot be re-opened."""
    from core.reporting.report import DIAGNOSIS_ON_REQUEST, ON_REQUEST_ASKED

    if run.job.engine == "ray":
        return True
    entry = run.report.variant(spec.name)
    if entry.get(DIAGNOSIS_ON_REQUEST) == ON_REQUEST_ASKED or entry.get("derived_by"):
        return True  # asked for; or made on the Layers page, or by auto-fix, to be looked at
    if run.job.auto_fix:
        return True  # the fixes start from the table, even below a lower-bound bar with no flip
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
    model = run.model
    try:
        if spec.equalized:  # compared with the equalized float model its tensors come from
            model, float_model = equalized_models(run, reference.calibration)
        summary = diagnose_variant(
            model,
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
    warnings = [warning] if warning else []
    causes, cause_warning = root_causes(
        run, spec, summary, flipped, reference.calibration, float_model
    )
    summary.update(causes)
    warnings += [cause_warning] if cause_warning else []
    return _Diagnosis(summary, warnings)


def equalized_models(run: RunContext, calibration: np.ndarray) -> tuple[ReferenceModel, bytes]:
    """The equalized reference model of an `:eq` variant and its float32 `.tflite`: what its
    per-layer error and root causes are measured against (the original's tensors are scaled
    per channel differently)."""
    from core.engine.backends import tflite_from_reference
    from core.engine.fixes.equalize_rung import equalized_reference, equalized_sha

    equalized = equalized_reference(run.model, calibration).reference
    float32 = tflite_from_reference(
        equalized,
        VariantSpec(mode=Mode.FLOAT32),
        model_sha256=equalized_sha(run.model_sha, calibration),
        cache_dir=run.cache_dir,
    ).tflite
    return equalized, float32


def root_causes(
    run: RunContext,
    spec: VariantSpec,
    summary: dict[str, Any],
    flipped: np.ndarray,
    calibration: np.ndarray,
    float_model: bytes,
) -> tuple[dict[str, Any], str | None]:
    """The variant's root causes in words (core.engine.causes) for its diagnosis's suspects,
    measured on the calibration images and the flipped ones (the calibration images when it
    flipped none), as the typed `diagnosis.causes`; or nothing and a warning."""
    from core.engine.biased_error import layer_errors, with_biased_error
    from core.engine.causes import find_causes
    from core.reporting.sections.diagnosis import VariantCauses

    run.emit("diagnose", 0.95, f"{spec.name}: root causes", spec.name)
    tflite = rundir.tflite_path(run.run_dir, spec).read_bytes()
    suspects = [s["layer"] for s in summary.get("suspects") or ()]
    try:
        found = find_causes(
            float_model,
            tflite,
            calibration=calibration,
            evaluated=flipped if len(flipped) else calibration,
            suspects=suspects,
        )
    except (QuantLensError, ValueError, RuntimeError, OSError) as exc:
        return {}, f"no root causes: {_first_line(exc)}"
    warning = None
    try:  # the one signal that runs the quantized model: its error's per-channel mean
        errors = layer_errors(float_model, tflite, calibration, layers=suspects)
        found = with_biased_error(found, errors, suspects=suspects)
    except (QuantLensError, ValueError, RuntimeError, OSError) as exc:
        warning = f"no biased-error signal: {_first_line(exc)}"
    return VariantCauses.from_dict(found.to_dict()).to_dict(), warning


def _record(run: RunContext, spec: VariantSpec, found: _Diagnosis) -> None:
    run.report.add_warnings(found.warnings, variant=spec.name)
    run.report.record_diagnosis(spec.name, found.summary)
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
        pixels = np.stack([decode_sample(run, rows[p]) for p in chosen])
    else:
        cache = DecodedCache(run.run_dir / DECODED_CACHE, run.image_shape)
        pixels = np.stack([cache.read(p) for p in chosen])
    return apply_preset(pixels, run.job.preset).astype(np.float32)


def row_samples(run: RunContext, reference: ReferenceOutputs) -> list[Sample]:
    """The evaluated samples in row (samples.csv) order."""
    by_index = {s.index: s for s in run.dataset.samples}
    return [by_index[i] for i in reference.sample_indices]


def decode_sample(run: RunContext, sample: Sample) -> np.ndarray:
    from core.inputs.images import decode_image

    height, width, channels = run.image_shape
    return decode_image(sample.path, height=height, width=width, channels=channels)
