"""The sweep stage (--calibration-sweep): int8 and int16x8 quantized with each calibration size
and seed, each point evaluated on the run's own evaluated images.

Points are made on the quantizer backend from one float32 model (the run's pivot when it has
one), so each costs a recipe, not a conversion. Their calibration images are drawn from the
run's calibration pool (core.engine.stages.decode.calibration_plan): held out of evaluation by
default. Writes sweep/<mode>-n<size>-s<seed>.tflite and report.json's `sweep` section, which is
saved after every point. Sweep points are not variants: no page lists them as such.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from core.engine.convert import PROBE_IMAGES
from core.engine.faults import maybe_inject
from core.engine.stages.context import RunContext
from core.engine.stages.decode import calibration_plan, decode_pool, first_images
from core.engine.stages.files import DecodedCache
from core.engine.stages.reference import ReferenceOutputs
from core.errors import QuantLensError
from core.inputs import rundir
from core.jobs.protocol import DECODED_CACHE
from core.types import Backend, Mode, VariantSpec

SWEEP_DIR = "sweep"
SWEEP_MODES = (Mode.INT8, Mode.INT16X8)


def point_file(mode: Mode, size: int, seed: int) -> str:
    """A point's .tflite, relative to the run folder: `sweep/int8-n50-s1.tflite`."""
    return f"{SWEEP_DIR}/{mode}-n{size}-s{seed}.tflite"


def point_draw(pool_size: int, size: int, seed: int, run_seed: int) -> np.ndarray:
    """Which pool images calibrate one point: a seeded draw of `size` of them, sorted."""
    rng = np.random.default_rng([run_seed, size, seed])
    return np.sort(rng.choice(pool_size, size=size, replace=False))


def run_sweep(run: RunContext, reference: ReferenceOutputs) -> None:
    """Every sweep point of the job, in order (size, then seed), recorded as it finishes."""
    from core.inputs.presets import apply_preset

    job = run.job
    if not job.calibration_sweep:
        return
    if job.engine == "ray":  # the cluster decodes the images; this machine holds a few only
        run.report.data["warnings"].append(
            "the calibration sweep needs --engine local (the images stay on the cluster); "
            "it was skipped"
        )
        return
    plan = calibration_plan(run.dataset, job, run.calibration_data)
    cache = DecodedCache(run.run_dir / DECODED_CACHE, run.image_shape)
    run.emit("sweep", 0.0, f"sweep: decoding up to {max(job.calibration_sweep)} pool images")
    _, pool = decode_pool(plan, max(job.calibration_sweep), reference.sample_indices, cache)
    sizes = sorted({min(n, len(pool)) for n in job.calibration_sweep if len(pool)})
    section = _new_section(run, plan.source, len(pool), sizes)
    float_tflite = _float_model(run)
    seeds = range(1, job.sweep_seeds + 1)
    points = [(mode, n, s) for mode in SWEEP_MODES for n in sizes for s in seeds]
    failed: set[Mode] = set()
    quiet = replace(run, progress=lambda _event: None)  # the runner's per-batch events
    for done, (mode, size, seed) in enumerate(points, start=1):
        if mode in failed:
            continue
        run.emit(
            "sweep",
            (done - 1) / len(points),
            f"sweep {mode} n={size} seed {seed} ({done}/{len(points)})",
        )
        maybe_inject("sweep")
        calibration = apply_preset(pool[point_draw(len(pool), size, seed, job.seed)], job.preset)
        try:
            point = _sweep_point(quiet, reference, float_tflite, mode, size, seed, calibration)
        except QuantLensError as exc:
            failed.add(mode)
            section["modes"][str(mode)] = {"error": str(exc), "points": []}
        else:
            section["modes"][str(mode)]["points"].append(point)
        _summarise(section, job.calibration_samples)
        run.report.save()
    run.emit("sweep", 1.0, f"sweep: {len(points)} points done")


def _new_section(run: RunContext, source: str, pool: int, sizes: list[int]) -> dict[str, Any]:
    """report.json's `sweep`, before any point: what is swept, from which pool."""
    from core.reporting.sweep import FLAT_WITHIN_PP

    job = run.job
    capped = sorted(n for n in job.calibration_sweep if n > pool)
    notes = []
    if capped:
        notes.append(
            f"sizes {', '.join(map(str, capped))} exceed the {pool} calibration images available "
            f"({source}); they ran with {pool}"
        )
    if sizes and sizes[-1] == pool and job.sweep_seeds > 1:
        notes.append(f"at n={pool} every seed draws the whole pool, so that size shows no spread")
    section: dict[str, Any] = {
        "backend": str(Backend.QUANTIZER),
        "requested_sizes": list(job.calibration_sweep),
        "sizes": sizes,
        "seeds": job.sweep_seeds,
        "pool_source": source,
        "pool_images": pool,
        "evaluated_n": None,
        "flat_within_pp": FLAT_WITHIN_PP,
        "run_calibration_samples": job.calibration_samples,
        "notes": notes,
        "modes": {str(mode): {"points": []} for mode in SWEEP_MODES},
        "statement": "",
    }
    run.report.data["sweep"] = section
    run.report.save()
    return section


def _float_model(run: RunContext) -> bytes:
    """The float32 .tflite every point quantizes: the run's own pivot, else a conversion."""
    from core.engine.convert import tflite_from_converter

    pivot = rundir.tflite_path(run.run_dir, "float32")
    if pivot.is_file():
        return pivot.read_bytes()
    run.emit("sweep", 0.0, "sweep: converting the float32 model the points start from")
    return tflite_from_converter(
        run.model,
        VariantSpec(mode=Mode.FLOAT32),
        model_sha256=run.model_sha,
        preset=str(run.job.preset),
        probe=first_images(run, PROBE_IMAGES),
        cache_dir=run.cache_dir,
    ).tflite


def _sweep_point(
    run: RunContext,
    reference: ReferenceOutputs,
    float_tflite: bytes,
    mode: Mode,
    size: int,
    seed: int,
    calibration: np.ndarray,
) -> dict[str, Any]:
    """Quantize, write and evaluate one point; its row in the `sweep` section."""
    from core.engine.quantizer import quantize_float_tflite
    from core.engine.stages.diagnose import measure_tflite
    from core.metrics.agreement import wilson_interval

    spec = VariantSpec(
        mode=mode,
        io_type=VariantSpec.parse(str(mode)).io_type,
        backend=Backend.QUANTIZER,
    )
    tflite = quantize_float_tflite(float_tflite, spec, calibration.astype(np.float32))
    file = point_file(mode, size, seed)
    (run.run_dir / SWEEP_DIR).mkdir(exist_ok=True)
    rundir.write_atomic(run.run_dir / file, tflite)
    # The same measurement the sensitivity scan uses, on every evaluated image.
    measured = measure_tflite(run, reference, tflite, limit=None)
    agreeing = round(measured.agreement_pct * measured.n / 100.0)
    low, high = wilson_interval(agreeing, measured.n)  # fractions; the report says %
    return {
        "size": size,
        "seed": seed,
        "agreement_pct": measured.agreement_pct,
        "ci95": [100.0 * low, 100.0 * high],
        "n": measured.n,
        "mean_kl": measured.mean_kl,
        "size_bytes": len(tflite),
        "file": file,
    }


def _summarise(section: dict[str, Any], run_size: int) -> None:
    """Per mode: the per-size spread and where it flattens; the section's statement."""
    from core.reporting.sweep import flattens_at, size_summary, statement

    lines = []
    for mode, entry in section["modes"].items():
        if entry.get("error"):
            lines.append(f"{mode}: not swept ({entry['error']})")
            continue
        if not entry["points"]:
            continue
        summary = size_summary(entry["points"])
        entry["summary"] = summary
        entry["flattens_at"] = flattens_at(summary)
        flat = entry["flattens_at"]
        entry["run_size_enough"] = (
            None if flat is None or flat == summary[-1]["size"] else (run_size >= flat)
        )
        entry["statement"] = statement(mode, summary, run_size)
        lines.append(entry["statement"])
        section["evaluated_n"] = entry["points"][0]["n"]
    section["statement"] = "; ".join(lines + section["notes"])
