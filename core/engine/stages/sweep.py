"""The sweep stage (--calibration-sweep): int8 and int16x8 quantized with each calibration size
and seed, each point evaluated on the run's own evaluated images.

Points are made on the quantizer backend from one float32 model (the run's pivot when it has
one), so each costs a recipe, not a conversion. Their calibration images are drawn from the
run's calibration pool (core.engine.stages.decode.calibration_plan): held out of evaluation by
default. Writes sweep/<mode>-n<size>-s<seed>.tflite and report.json's `sweep` section, which is
saved after every point. Sweep points are not variants: no page lists them as such.

On --engine ray the points are quantized as Ray tasks (core.engine.ray_engine.quantize_as_tasks)
and evaluated together in a cluster pass; their rows come from the measurement the local
engine's points end in (stages.measure.measurement), so the numbers are the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from core.engine.faults import maybe_inject
from core.engine.stages.context import RunContext
from core.engine.stages.decode import calibration_plan, decode_pool
from core.engine.stages.files import DecodedCache
from core.engine.stages.reference import ReferenceOutputs
from core.errors import QuantLensError
from core.inputs import rundir
from core.reporting.sections.sweep_record import Sweep, SweepMode, SweepRow
from core.runfolder.protocol import DECODED_CACHE
from core.types import Backend, JobSpec, Mode, VariantSpec

if TYPE_CHECKING:
    from core.engine.fixes.keep_float import Measurement

SWEEP_DIR = "sweep"
SWEEP_MODES = (Mode.INT8, Mode.INT16X8)
# On --engine ray, the points' raw outputs the head holds at once (a cluster pass's worth).
HELD_OUTPUTS_BYTES = 2**30


def point_file(mode: Mode, size: int, seed: int) -> str:
    """A point's .tflite, relative to the run folder: `sweep/int8-n50-s1.tflite`."""
    return f"{SWEEP_DIR}/{mode}-n{size}-s{seed}.tflite"


def point_draw(pool_size: int, size: int, seed: int, run_seed: int) -> np.ndarray:
    """Which pool images calibrate one point: a seeded draw of `size` of them, sorted."""
    rng = np.random.default_rng([run_seed, size, seed])
    return np.sort(rng.choice(pool_size, size=size, replace=False))


@dataclass(frozen=True)
class SweepPoint:
    """One point of the sweep: a mode quantized with `size` pool images drawn with `seed`."""

    mode: Mode
    size: int
    seed: int
    draw: np.ndarray = field(compare=False)  # positions in the calibration pool (point_draw)

    @property
    def file(self) -> str:
        return point_file(self.mode, self.size, self.seed)

    @property
    def name(self) -> str:
        """The point's model name on the cluster: `int8-n50-s1`."""
        return self.file.removeprefix(f"{SWEEP_DIR}/").removesuffix(".tflite")

    @property
    def spec(self) -> VariantSpec:
        return VariantSpec(
            mode=self.mode,
            io_type=VariantSpec.parse(str(self.mode)).io_type,
            backend=Backend.QUANTIZER,
        )


def run_sweep(run: RunContext, reference: ReferenceOutputs) -> None:
    """Every sweep point of the job, recorded in order (size, then seed).

    On the local engine each point is quantized and measured in turn, and recorded as it
    finishes; on --engine ray the points are quantized as Ray tasks, evaluated together in
    cluster passes (one unless the data set is large), then recorded. Either way a point's row comes from the same measurement.
    """
    job = run.job
    if not job.calibration_sweep:
        return
    source, images = _calibration_pool(run, reference)
    sizes = sorted({min(n, len(images)) for n in job.calibration_sweep if len(images)})
    section = _new_section(source, len(images), sizes, run.job)
    _save(run, section)
    float_tflite = _float_model(run)
    points = [
        SweepPoint(mode, n, s, point_draw(len(images), n, s, job.seed))
        for mode in SWEEP_MODES
        for n in sizes
        for s in range(1, job.sweep_seeds + 1)
    ]
    sweep = _sweep_on_ray if job.engine == "ray" else _sweep_here
    if points:  # none when no pool image decodes (the section's notes say so)
        sweep(run, reference, section, float_tflite, images, points)
    run.emit("sweep", 1.0, f"sweep: {len(points)} points done")


def _calibration_pool(run: RunContext, reference: ReferenceOutputs) -> tuple[str, np.ndarray]:
    """Where the pool comes from, and its first images, preprocessed: as many as the run's
    calibration count or the largest size, whichever is more, so that seeds draw different
    images at the largest size too (when it is below the calibration count).

    Evaluated images are read back from the decoded cache; on --engine ray the head's cache
    holds only the first few (the probe images), so only those positions are looked up there.
    """
    from core.inputs.presets import apply_preset

    job = run.job
    plan = calibration_plan(run.dataset, job, run.calibration_data)
    cache = DecodedCache(run.run_dir / DECODED_CACHE, run.image_shape)
    wanted = max(job.calibration_samples, *job.calibration_sweep)
    run.emit("sweep", 0.0, f"sweep: decoding up to {wanted} pool images")
    cached = reference.sample_indices[: len(cache)]
    _, pool = decode_pool(plan, wanted, cached, cache)
    # Presets work pixel by pixel: a point's draw from this array is the draw preprocessed.
    return plan.source, apply_preset(pool, job.preset).astype(np.float32)


def _sweep_here(
    run: RunContext,
    reference: ReferenceOutputs,
    section: Sweep,
    float_tflite: bytes,
    images: np.ndarray,
    points: list[SweepPoint],
) -> None:
    """The local engine: quantize, write and measure each point in turn, saving each row."""
    from core.engine.quantizer import quantize_float_tflite
    from core.engine.stages.measure import measure_tflite

    failed: set[Mode] = set()
    for done, point in enumerate(points, start=1):
        if point.mode in failed:
            continue
        _announce(run, point, done, len(points), (done - 1) / len(points))
        maybe_inject("sweep")
        try:
            tflite = quantize_float_tflite(float_tflite, point.spec, images[point.draw])
            _write_point(run, point, tflite)
            # The same measurement the sensitivity scan uses, on every evaluated image.
            outcome: Measurement | str = measure_tflite(run, reference, tflite, limit=None)
        except QuantLensError as exc:
            outcome = str(exc)
            failed.add(point.mode)
        section = _record_point(section, point, outcome)
        _save(run, _summarise(section, run.job.calibration_samples))


def _sweep_on_ray(
    run: RunContext,
    reference: ReferenceOutputs,
    section: Sweep,
    float_tflite: bytes,
    images: np.ndarray,
    points: list[SweepPoint],
) -> None:
    """--engine ray: every point quantized as a Ray task and written here, then evaluated
    together (cluster_passes), then recorded in point order as the local engine records them
    (a mode's first failure, quantizing or evaluating, is its error).

    Raises:
        ClusterUnavailable: the cluster cannot be joined, or was lost.
    """
    from core.engine import ray_engine

    with ray_engine.job_session(run.job):
        outcomes, written = _quantized_on_ray(run, float_tflite, images, points)
        passes = cluster_passes(list(written), len(reference), reference.num_classes)
        for number, group in enumerate(passes):
            outcomes.update(_measured_on_ray(run, reference, written, group, (number, len(passes))))
    section = record_in_order(section, points, outcomes)
    _save(run, _summarise(section, run.job.calibration_samples))


def record_in_order(
    section: Sweep, points: list[SweepPoint], outcomes: dict[str, Measurement | str]
) -> Sweep:
    """Record the points' outcomes (by point name) in point order, as the local engine records
    them one by one: a mode's first error replaces its rows, and its later points are left out
    (as are points with no outcome: they were not made)."""
    failed: set[Mode] = set()
    for point in points:
        if point.mode in failed or point.name not in outcomes:
            continue
        outcome = outcomes[point.name]
        if isinstance(outcome, str):
            failed.add(point.mode)
        section = _record_point(section, point, outcome)
    return section


def _quantized_on_ray(
    run: RunContext, float_tflite: bytes, images: np.ndarray, points: list[SweepPoint]
) -> tuple[dict[str, Measurement | str], dict[SweepPoint, int]]:
    """Quantize every point as a Ray task and write each file, in point order, up to a mode's
    first failure (its later points are not made, as locally). Returns the failures by point
    name, and the written points with their sizes in bytes."""
    from core.engine import ray_engine

    def quantized(position: int) -> None:
        _announce(run, points[position], position + 1, len(points), 0.5 * position / len(points))

    made = ray_engine.quantize_as_tasks(
        float_tflite,
        images,
        [(p.spec, p.draw) for p in points],
        progress=quantized,
        address=run.job.ray_address,
    )
    failures: dict[str, Measurement | str] = {}
    written: dict[SweepPoint, int] = {}
    unmade: set[Mode] = set()
    for point, result in zip(points, made, strict=True):
        if point.mode in unmade:
            continue
        maybe_inject("sweep")
        if result.tflite is None:
            unmade.add(point.mode)
            failures[point.name] = result.error or "the quantizer made no model"
            continue
        _write_point(run, point, result.tflite)
        written[point] = len(result.tflite)
    return failures, written


def cluster_passes(points: list[SweepPoint], rows: int, classes: int) -> list[list[SweepPoint]]:
    """The points in cluster passes, in order, whose raw outputs (float32, rows x classes a
    point) the head can hold at once: one pass unless the data set is large (ImageNet's
    50,000 x 1,000 is 200 MB a point, so 5 a pass)."""
    per_pass = max(1, HELD_OUTPUTS_BYTES // max(1, rows * classes * 4))
    return [points[start : start + per_pass] for start in range(0, len(points), per_pass)]


def _measured_on_ray(
    run: RunContext,
    reference: ReferenceOutputs,
    written: dict[SweepPoint, int],
    group: list[SweepPoint],
    which: tuple[int, int],
) -> dict[str, Measurement | str]:
    """The group's points on the rows the original was recorded on, in one cluster pass
    (`which`: its number from 0, and how many there are): each point's measurement from its
    outputs and the size of its file (`written`), or the error of a point that failed there."""
    from core.engine import ray_engine
    from core.engine.stages.diagnose import row_samples
    from core.engine.stages.measure import measurement
    from core.engine.stages.ray_evaluate import check_same_rows, reference_source

    number, passes = which
    what = f"{len(group)} point{'s' if len(group) > 1 else ''}"
    what += f" (pass {number + 1}/{passes})" if passes > 1 else ""

    def evaluated(done: int, total: int) -> None:
        fraction = 0.5 + 0.5 * (number + done / max(total, 1)) / passes
        run.emit("sweep", fraction, f"sweep: evaluating {what} on Ray ({done}/{total} images)")

    evaluation = ray_engine.evaluate(
        row_samples(run, reference),
        preset=run.job.preset,
        image_shape=run.image_shape,
        reference=reference_source(run),
        variants=[(p.name, run.run_dir / p.file) for p in group],
        progress=evaluated,
        address=run.job.ray_address,
    )
    check_same_rows(evaluation, reference)
    outcomes: dict[str, Measurement | str] = dict(evaluation.errors)
    for point in group:
        if point.name in evaluation.variants:
            outputs = evaluation.variants[point.name]
            outcomes[point.name] = measurement(reference, outputs, written[point])
    return outcomes


def _announce(run: RunContext, point: SweepPoint, done: int, total: int, fraction: float) -> None:
    message = f"sweep {point.mode} n={point.size} seed {point.seed} ({done}/{total})"
    run.emit("sweep", fraction, message)


def _write_point(run: RunContext, point: SweepPoint, tflite: bytes) -> None:
    (run.run_dir / SWEEP_DIR).mkdir(exist_ok=True)
    rundir.write_atomic(run.run_dir / point.file, tflite)


def _record_point(section: Sweep, point: SweepPoint, outcome: Measurement | str) -> Sweep:
    """A point's row in its mode, or its error as the mode's (which then has no points)."""
    mode = str(point.mode)
    if isinstance(outcome, str):
        return section.with_mode(mode, SweepMode(error=outcome))
    entry = section.modes.get(mode) or SweepMode()
    rows = (*entry.points, _point_row(point, outcome))
    return section.with_mode(mode, replace(entry, points=rows))


def _point_row(point: SweepPoint, measured: Measurement) -> SweepRow:
    """A point's row in the `sweep` section, from its measurement on every evaluated image."""
    from core.metrics.agreement import wilson_interval

    agreeing = round(measured.agreement_pct * measured.n / 100.0)
    low, high = wilson_interval(agreeing, measured.n)  # fractions; the report says %
    return SweepRow(
        size=point.size,
        seed=point.seed,
        agreement_pct=measured.agreement_pct,
        ci95=(100.0 * low, 100.0 * high),
        n=measured.n,
        mean_kl=measured.mean_kl,
        size_bytes=measured.size_bytes,
        file=point.file,
    )


def _save(run: RunContext, section: Sweep) -> None:
    run.report.put(section)
    run.report.save()


def _new_section(source: str, pool: int, sizes: list[int], job: JobSpec) -> Sweep:
    """report.json's `sweep`, before any point: what is swept, from which pool."""
    from core.reporting.sweep import FLAT_WITHIN_PP

    capped = sorted(n for n in job.calibration_sweep if n > pool)
    notes = []
    if capped:
        notes.append(
            f"sizes {', '.join(map(str, capped))} exceed the {pool} calibration images available "
            f"({source}); they ran with {pool}"
        )
    if sizes and sizes[-1] == pool and job.sweep_seeds > 1:
        notes.append(f"at n={pool} every seed draws the whole pool, so that size shows no spread")
    return Sweep(
        backend=str(Backend.QUANTIZER),
        requested_sizes=tuple(job.calibration_sweep),
        sizes=tuple(sizes),
        seeds=job.sweep_seeds,
        pool_source=source,
        pool_images=pool,
        evaluated_n=None,
        flat_within_pp=FLAT_WITHIN_PP,
        run_calibration_samples=job.calibration_samples,
        notes=tuple(notes),
        modes={str(mode): SweepMode() for mode in SWEEP_MODES},
        statement="",
    )


def _float_model(run: RunContext) -> bytes:
    """The float32 .tflite every point quantizes: the run's own pivot, else a conversion."""
    from core.engine.stages.diagnose import float_tflite

    if not rundir.tflite_path(run.run_dir, VariantSpec(mode=Mode.FLOAT32)).is_file():
        run.emit("sweep", 0.0, "sweep: converting the float32 model the points start from")
    return float_tflite(run)


def _summarise(section: Sweep, run_size: int) -> Sweep:
    """Per mode: the per-size spread and where it flattens; the section's statement."""
    from core.reporting.sweep import flattens_at, size_summary, statement

    lines = []
    for mode, entry in section.modes.items():
        if entry.error:
            lines.append(f"{mode}: not swept ({entry.error})")
            continue
        if not entry.points:
            continue
        summary = size_summary(entry.points)
        flat = flattens_at(summary)
        said = statement(mode, summary, run_size)
        summarised = replace(
            entry,
            summary=tuple(summary),
            flattens_at=flat,
            run_size_enough=(
                None if flat is None or flat == summary[-1]["size"] else (run_size >= flat)
            ),
            statement=said,
        )
        section = replace(section.with_mode(mode, summarised), evaluated_n=entry.points[0].n)
        lines.append(said)
    return replace(section, statement="; ".join(lines + list(section.notes)))
