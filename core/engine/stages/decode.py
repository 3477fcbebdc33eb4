"""The decode stage: every evaluation image decoded once, into the decoded cache.

Decoding is streamed: the reference stage takes each batch as soon as it is decoded, so memory
holds one batch whatever the number of images. Writes .decoded.u8 (raw uint8 [N,H,W,C]).

It also decides which images calibrate (`calibration_plan`): by default a seeded pool is held
out of evaluation when the data set has at least twice the calibration count; below that, or
with --calibration-overlap, calibration images may also be evaluated; --calibration-data
calibrates on a separate set. The images used are listed in calibration.csv.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from core.engine.faults import maybe_inject
from core.engine.stages.context import RunContext
from core.engine.stages.files import BATCH, DecodedCache, write_csv
from core.inputs import rundir
from core.runfolder.protocol import DECODED_CACHE
from core.types import NEEDS_CALIBRATION, Dataset, JobSpec, Sample, SkippedSample, VariantSpec

# calibration.csv: the images the run's variants were calibrated with.
CALIBRATION_LIST = rundir.CALIBRATION_LIST
# Where the calibration images come from (report.json `calibration.source`).
HELD_OUT = "held-out"  # drawn from the data set and kept out of evaluation
OVERLAPPING = "overlapping"  # drawn from the whole data set; may also be evaluated
SEPARATE = "separate"  # --calibration-data
NO_CALIBRATION = "none"  # no variant needs calibration


@dataclass(frozen=True)
class CalibrationPlan:
    """Which samples may calibrate (`pool`, in seeded draw order) and which may be evaluated."""

    source: str  # HELD_OUT, OVERLAPPING, SEPARATE or NO_CALIBRATION (drawn as OVERLAPPING)
    pool: tuple[Sample, ...]
    evaluable: tuple[Sample, ...]  # in data set order; --samples draws from these
    reason: str  # one line: why this source

    @property
    def held_out(self) -> int:
        return len(self.pool) if self.source == HELD_OUT else 0


def needs_calibration(job: JobSpec) -> bool:
    """True when some variant (or the sweep) is calibrated: int8 or int16x8."""
    modes = {VariantSpec.parse(name).mode for name in job.variants}
    return bool(job.calibration_sweep) or bool(modes & NEEDS_CALIBRATION)


def calibration_plan(dataset: Dataset, job: JobSpec, separate: Dataset | None) -> CalibrationPlan:
    """Where the run's calibration images come from (see the module docstring).

    The held-out pool holds the calibration count, or the largest sweep size when larger, but
    never more than half the data set, so at least half stays for evaluation.
    """
    samples = dataset.samples
    shuffled = _seeded_order(samples, job.seed)
    if not needs_calibration(job):
        # Nothing to hold out for: the images only measure per-layer error (diagnosis).
        reason = "no variant is calibrated; these images only measure per-layer error"
        return CalibrationPlan(NO_CALIBRATION, shuffled, samples, reason)
    if separate is not None:
        return CalibrationPlan(
            SEPARATE, _seeded_order(separate.samples, job.seed), samples, "--calibration-data"
        )
    if job.calibration_overlap:
        return CalibrationPlan(OVERLAPPING, shuffled, samples, "--calibration-overlap")
    if len(samples) < 2 * job.calibration_samples:
        reason = (
            f"the data set has {len(samples)} images, fewer than twice the "
            f"{job.calibration_samples} calibration images, so calibration images are also "
            "evaluated"
        )
        return CalibrationPlan(OVERLAPPING, shuffled, samples, reason)
    wanted = max((job.calibration_samples, *job.calibration_sweep))
    pool = shuffled[: min(wanted, len(samples) // 2)]
    held = {s.index for s in pool}
    rest = tuple(s for s in samples if s.index not in held)
    return CalibrationPlan(HELD_OUT, pool, rest, f"{len(pool)} images held out of evaluation")


def _seeded_order(samples: Sequence[Sample], seed: int) -> tuple[Sample, ...]:
    # seed + 1: the evaluated draw (select_samples) uses `seed` itself.
    order = np.random.default_rng(seed + 1).permutation(len(samples))
    return tuple(samples[int(i)] for i in order)


@dataclass(frozen=True)
class DecodedBatch:
    samples: list[Sample]  # the batch's decodable samples, in data set order
    pixels: np.ndarray  # their uint8 images [n, H, W, C], already in the cache
    done: int  # evaluation samples handled so far, decodable or not
    total: int


class DecodedImages:
    """The decode stage's output, produced batch by batch while the reference stage reads it.

    After `batches()` is exhausted, `kept` lists the decoded samples (cache order) and
    `skipped` every sample that was not evaluated, with its reason.
    """

    def __init__(self, run: RunContext) -> None:
        self.run = run
        self.cache = DecodedCache(run.run_dir / DECODED_CACHE, run.image_shape)
        self.plan = calibration_plan(run.dataset, run.job, run.calibration_data)
        self.evaluated = select_samples(self.plan.evaluable, run.job.max_samples, seed=run.job.seed)
        self.kept: list[Sample] = []
        self.skipped: list[SkippedSample] = list(run.dataset.skipped)

    def batches(self) -> Iterator[DecodedBatch]:
        """The decoded batches in order. The next batch is decoded on a second thread while the
        caller works on this one (the original's pass: Pillow and TensorFlow both release the
        GIL), so decoding overlaps the pass instead of adding to it; the batches, their order
        and the cache are those of decoding one batch after another."""
        run, total = self.run, len(self.evaluated)
        height, width, channels = run.image_shape
        self.cache.path.unlink(missing_ok=True)

        def decode_from(start: int) -> tuple[list[Sample], list[np.ndarray], list[SkippedSample]]:
            batch = self.evaluated[start : start + BATCH]
            return decode_batch(batch, height=height, width=width, channels=channels)

        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantlens-decode") as ahead:
            next_batch = ahead.submit(decode_from, 0)
            for start in range(0, total, BATCH):
                # Each event names the step about to run, so a crash inside it is reported there.
                run.emit(
                    "decode",
                    start / total,
                    f"decoding images {start + 1}-{min(start + BATCH, total)} of {total}",
                )
                maybe_inject("decode")
                kept, images, bad = next_batch.result()
                following = start + BATCH
                if following < total:
                    next_batch = ahead.submit(decode_from, following)
                yield from self._keep(kept, images, bad, done=min(following, total), total=total)

    def _keep(
        self,
        kept: list[Sample],
        images: list[np.ndarray],
        bad: list[SkippedSample],
        *,
        done: int,
        total: int,
    ) -> Iterator[DecodedBatch]:
        """One decoded batch into the cache and the lists; yields it unless none decoded."""
        self.skipped.extend(bad)
        if not kept:
            return
        pixels = np.stack(images)
        self.cache.append(pixels)
        self.kept.extend(kept)
        yield DecodedBatch(samples=kept, pixels=pixels, done=done, total=total)


def select_samples(samples: Sequence[Sample], count: int | None, *, seed: int) -> list[Sample]:
    """`count` samples drawn with a fixed seed, in data set order; all of them when count is None."""
    if count is None or count >= len(samples):
        return list(samples)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(samples), size=max(count, 0), replace=False))
    return [samples[i] for i in chosen]


def decode_batch(
    samples: Sequence[Sample], *, height: int, width: int, channels: int
) -> tuple[list[Sample], list[np.ndarray], list[SkippedSample]]:
    """Decode each sample; the ones that fail are returned as skipped, with the reason."""
    from core.errors import ImageDecodeError
    from core.inputs.images import decode_image

    kept: list[Sample] = []
    images: list[np.ndarray] = []
    skipped: list[SkippedSample] = []
    for sample in samples:
        try:
            images.append(decode_image(sample.path, height=height, width=width, channels=channels))
            kept.append(sample)
        except ImageDecodeError as exc:
            skipped.append(SkippedSample(relpath=sample.relpath, reason=str(exc)))
    return kept, images, skipped


def calibration_set(
    run: RunContext, plan: CalibrationPlan, kept: list[Sample], cache: DecodedCache
) -> np.ndarray | None:
    """The run's calibration images (float32, preprocessed), listed in calibration.csv and
    described in report.json's `calibration`; None when nothing is calibrated or none decodes.

    `kept` are the decoded evaluation samples, read back from `cache` instead of decoding again.
    """
    from core.inputs.presets import apply_preset

    cached = [s.index for s in kept]
    used, pixels = decode_pool(plan, run.job.calibration_samples, cached, cache)
    write_calibration_record(run, plan, used)
    if not used:
        return None
    return apply_preset(pixels, run.job.preset).astype(np.float32)


def decode_pool(
    plan: CalibrationPlan, count: int, cached: Sequence[int], cache: DecodedCache
) -> tuple[list[Sample], np.ndarray]:
    """The first `count` decodable images of the pool, in draw order, as uint8 [n,H,W,C].

    `cached` are the data set indices of the images in `cache`, in its order; those are read
    back instead of decoded again.

    Undecodable images are replaced by the next ones in the same order, so a few broken files
    never starve int8 of calibration data (a held-out pool has no spare: it yields fewer).
    """
    from core.errors import ImageDecodeError
    from core.inputs.images import decode_image

    height, width, channels = cache.shape
    # Only evaluated images of this data set are in the cache; a separate set's never are.
    position = {} if plan.source == SEPARATE else {index: i for i, index in enumerate(cached)}
    used: list[Sample] = []
    chosen: list[np.ndarray] = []
    for sample in plan.pool:
        if len(chosen) >= count:
            break
        try:
            if sample.index in position:
                chosen.append(cache.read(position[sample.index]))
            else:
                chosen.append(
                    decode_image(sample.path, height=height, width=width, channels=channels)
                )
        except ImageDecodeError:
            continue
        used.append(sample)
    empty = np.zeros((0, height, width, channels), dtype=np.uint8)
    return used, (np.stack(chosen) if chosen else empty)


def write_calibration_record(run: RunContext, plan: CalibrationPlan, used: list[Sample]) -> None:
    """calibration.csv (the images used) and report.json's `calibration` section."""
    from core.inputs.datasets import dataset_sha256
    from core.reporting.sections.calibration_record import CalibrationRecord

    write_csv(
        run.run_dir / CALIBRATION_LIST,
        {"index": [s.index for s in used], "relpath": [s.relpath for s in used]},
    )
    record = CalibrationRecord(
        source=plan.source,
        reason=plan.reason,
        requested=run.job.calibration_samples,
        images=len(used),
        held_out=plan.held_out,
        evaluable=len(plan.evaluable),
        path=run.job.calibration_data,
        # A content hash of --calibration-data, as the data set's: a re-score checks it.
        sha256=None if run.calibration_data is None else dataset_sha256(run.calibration_data),
        file=CALIBRATION_LIST,
    )
    run.report.put(record)
    if plan.source != NO_CALIBRATION and len(used) < run.job.calibration_samples:
        run.report.add_warnings(
            [
                f"only {len(used)} of the {run.job.calibration_samples} calibration images "
                "could be used; int8 ranges rest on fewer images"
            ]
        )


def first_images(run: RunContext, count: int) -> np.ndarray:
    """The first `count` evaluation images, preprocessed (float32 [N,H,W,C])."""
    from core.inputs.presets import apply_preset

    cache = DecodedCache(run.run_dir / DECODED_CACHE, run.image_shape)
    first = next(cache.batches(count))
    return apply_preset(first, run.job.preset).astype(np.float32)
