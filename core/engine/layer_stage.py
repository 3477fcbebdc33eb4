"""The pipeline's per-layer work (issue 12): diagnose each finished quantized variant, and
`--auto-fix` the ones below the bar with a measured search, adding the result as a variant.

Two entry points for core.engine.pipeline.JobRunner: `diagnose_finished` (after a variant is
evaluated) and `auto_fix` (after every variant is, before timing). They read the runner's
state (model, calibration images, decoded-image cache, reference outputs) and write the
report through it.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from core.engine.convert import ConversionResult
from core.errors import QuantLensError
from core.types import JobSpec, Mode, VariantSpec

if TYPE_CHECKING:
    from core.engine.pipeline import JobRunner
    from core.engine.selective import Measurement


def diagnose_finished(
    runner: JobRunner, spec: VariantSpec, result: ConversionResult, agree: np.ndarray
) -> None:
    """Per-layer error of a finished quantized variant: `<variant>.layers.csv` and the entry's
    `diagnosis`. A diagnosis that fails is a warning; the variant's results stand."""
    from core.engine.diagnose import LAYERS_SUFFIX, can_diagnose, diagnose_variant
    from core.engine.pipeline import _event
    from core.reporting.report import record_diagnosis

    if not can_diagnose(spec) or runner.calibration is None:
        return
    name = spec.name
    try:
        summary = diagnose_variant(
            runner.model,
            spec,
            result.tflite,
            float_tflite=float_tflite(runner),
            route=result.route,
            calibration=runner.calibration,
            flipped=images_at(runner, np.flatnonzero(~agree)),
            out_csv=runner.run_dir / f"{name}{LAYERS_SUFFIX}",
            progress=lambda f, msg: _event(runner.progress, "diagnose", f, msg, name),
        )
    except (QuantLensError, ValueError, RuntimeError) as exc:
        summary = None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        runner.variant_entry(name)["warnings"].append(f"no per-layer diagnosis: {first}")
    record_diagnosis(runner.report, name, summary)
    runner.save_report()


def auto_fix(runner: JobRunner) -> None:
    """`--auto-fix K`: each judged variant below the bar that can keep layers in float gets a
    measured sensitivity scan, a greedy fix, and the result as a derived variant."""
    if not runner.job.auto_fix:
        return
    for spec in list(runner.specs):
        entry = runner.variant_entry(spec.name)
        if auto_fix_applies(spec, entry, runner.job):
            _auto_fix_variant(runner, spec, entry)


def auto_fix_applies(spec: VariantSpec, entry: dict[str, Any], job: JobSpec) -> bool:
    """Whether `--auto-fix` works on this variant: a finished, judged variant without overrides,
    below the bar (not for want of a verdict), on a mode that can keep layers in float."""
    from core.reporting.report import ROLE_SELECTED, meets_threshold

    if spec.float_layers or spec.int16_layers or entry.get("auto_fix") is not None:
        return False
    if entry.get("role") != ROLE_SELECTED or entry.get("status") != "done":
        return False
    if entry.get("verdict_reason") or entry.get("top1_agreement_pct") is None:
        return False
    if meets_threshold(
        entry["top1_agreement_pct"],
        entry.get("top1_agreement_ci95"),
        job.min_agreement_pct,
        job.verdict,
    ):
        return False
    try:
        replace(spec, float_layers=("any",)).check()
    except QuantLensError:
        return False
    return True


def _auto_fix_variant(runner: JobRunner, spec: VariantSpec, entry: dict[str, Any]) -> None:
    from core.engine import selective
    from core.engine.diagnose import LAYERS_SUFFIX, candidate_layers
    from core.engine.pipeline import _event

    name = spec.name
    table = runner.run_dir / f"{name}{LAYERS_SUFFIX}"
    if not table.is_file() or runner.calibration is None:
        entry["auto_fix"] = {"error": "no per-layer statistics to propose candidates from"}
        runner.save_report()
        return

    def progress(fraction: float, message: str) -> None:
        _event(runner.progress, "auto-fix", fraction, f"{name}: {message}", name)

    try:
        make = selective.keep_float_maker(
            runner.model,
            spec,
            calibration=runner.calibration,
            route=entry.get("conversion_route") or "",
            float_tflite=float_tflite(runner),
        )
        scan = selective.sensitivity_scan(
            make,
            lambda t: measure_tflite(runner, t, limit=selective.SCAN_IMAGES),
            candidate_layers(table, selective.SCAN_CANDIDATES),
            progress=progress,
        )
        steps = selective.greedy_fix(
            make,
            lambda t: measure_tflite(runner, t, limit=None),
            [m["layer"] for m in scan],
            max_layers=int(runner.job.auto_fix or 0),
            meets=lambda m: _meets_bar(runner.job, m),
            progress=progress,
        )
    except QuantLensError as exc:
        entry["auto_fix"] = {"error": str(exc)}
        runner.save_report()
        return
    derived = replace(spec, float_layers=tuple(steps[-1]["layers"])) if steps else None
    entry["auto_fix"] = {
        "candidates_by": f"the per-layer statistics ({table.name})",
        "ranked_by": "measured mean KL with one layer in float, then agreement",
        "scan_images": min(selective.SCAN_IMAGES, len(runner.ref_probs)),
        "sensitivity": scan,
        "steps": steps,
        "variant": None if derived is None else derived.name,
    }
    if derived is None or any(v["name"] == derived.name for v in runner.report["variants"]):
        runner.save_report()
        return
    _add_and_run(runner, derived)


def _add_and_run(runner: JobRunner, derived: VariantSpec) -> None:
    """Add a derived variant to the job and run it like any other (converted, evaluated,
    diagnosed now; timed with the others)."""
    from core.engine.pipeline import convert_in_background
    from core.reporting.report import ROLE_SELECTED, pending_variant

    runner.report["variants"].append(
        {**pending_variant(derived, role=ROLE_SELECTED), "derived_by": "auto-fix"}
    )
    runner.specs.append(derived)
    runner.save_report()
    conversion: Future[ConversionResult] = Future()
    try:
        conversion.set_result(
            convert_in_background(runner, derived, runner.calibration, runner._first_images(8))
        )
    except QuantLensError as exc:
        conversion.set_exception(exc)
    runner._run_variant(derived, conversion)


def _meets_bar(job: JobSpec, measured: Measurement) -> bool:
    """The verdict rule of the job, applied to a measurement (its Wilson interval recomputed)."""
    from core.metrics.agreement import wilson_interval
    from core.reporting.report import meets_threshold

    agreeing = round(measured.agreement_pct * measured.n / 100.0)
    low, high = wilson_interval(agreeing, measured.n)
    return meets_threshold(
        measured.agreement_pct, (100.0 * low, 100.0 * high), job.min_agreement_pct, job.verdict
    )


def measure_tflite(runner: JobRunner, tflite: bytes, *, limit: int | None) -> Measurement:
    """Agreement and mean KL of a model against the original on the first `limit` evaluation
    images (all of them when None), read from the run's decoded-image cache."""
    from core.engine.pipeline import DECODED_CACHE, DecodedCache, effective_threads
    from core.engine.runtime import TFLiteRunner
    from core.engine.selective import Measurement
    from core.inputs.data import apply_preset
    from core.metrics.agreement import sample_records, to_probabilities

    model = TFLiteRunner(tflite, threads=effective_threads(runner.job), name="candidate")
    sig = runner.model.signature
    cache = DecodedCache(runner.run_dir / DECODED_CACHE, (sig.height, sig.width, sig.channels))
    total = len(cache) if limit is None else min(limit, len(cache))
    rows = np.empty((total, sig.num_classes), dtype=np.float32)
    done = 0
    for pixels in cache.batches():
        for image in apply_preset(pixels[: total - done], runner.job.preset):
            rows[done] = model.run(image)
            done += 1
        if done >= total:
            break
    probs = to_probabilities(rows, softmax=runner.softmax)
    records = sample_records(runner.ref_probs[:total], probs)
    kl = records.kl[np.isfinite(records.kl)]
    return Measurement(
        agreement_pct=float(100.0 * records.agree.mean()),
        mean_kl=float(kl.mean()) if kl.size else float("inf"),
        size_bytes=len(tflite),
        n=total,
    )


def float_tflite(runner: JobRunner) -> bytes:
    """The float32 TFLite model the quantizer starts from: the pivot's file when it exists."""
    from core.engine.convert import tflite_from_reference
    from core.inputs import rundir

    pivot = rundir.tflite_path(runner.run_dir, VariantSpec(mode=Mode.FLOAT32).name)
    if pivot.is_file():
        return pivot.read_bytes()
    return tflite_from_reference(
        runner.model,
        VariantSpec(mode=Mode.FLOAT32),
        model_sha256=runner.model_sha,
        cache_dir=runner.cache_dir,
    ).tflite


def images_at(runner: JobRunner, positions: np.ndarray) -> np.ndarray:
    """Preprocessed evaluation images (float32 [N,H,W,C]) by their row positions, at most
    core.engine.diagnose.MAX_IMAGES of them."""
    from core.engine.diagnose import MAX_IMAGES
    from core.engine.pipeline import DECODED_CACHE, DecodedCache
    from core.inputs.data import apply_preset

    sig = runner.model.signature
    cache = DecodedCache(runner.run_dir / DECODED_CACHE, (sig.height, sig.width, sig.channels))
    chosen = [cache.read(int(p)) for p in positions[:MAX_IMAGES]]
    if not chosen:
        return np.zeros((0, sig.height, sig.width, sig.channels), dtype=np.float32)
    return apply_preset(np.stack(chosen), runner.job.preset).astype(np.float32)
