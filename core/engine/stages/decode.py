"""The decode stage: every evaluation image decoded once, into the decoded cache.

Decoding is streamed: the reference stage takes each batch as soon as it is decoded, so memory
holds one batch whatever the number of images. Writes .decoded.u8 (raw uint8 [N,H,W,C]).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from core.engine.faults import maybe_inject
from core.engine.stages.context import RunContext
from core.engine.stages.files import BATCH, DecodedCache
from core.jobs.protocol import DECODED_CACHE
from core.types import Dataset, JobSpec, Sample, SkippedSample


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
        self.evaluated = select_samples(run.dataset.samples, run.job.max_samples, seed=run.job.seed)
        self.kept: list[Sample] = []
        self.skipped: list[SkippedSample] = list(run.dataset.skipped)

    def batches(self) -> Iterator[DecodedBatch]:
        run, total = self.run, len(self.evaluated)
        height, width, channels = run.image_shape
        self.cache.path.unlink(missing_ok=True)
        for start in range(0, total, BATCH):
            # Each event names the step about to run, so a crash inside it is reported there.
            run.emit(
                "decode",
                start / total,
                f"decoding images {start + 1}-{min(start + BATCH, total)} of {total}",
            )
            maybe_inject("decode")
            kept, images, bad = decode_batch(
                self.evaluated[start : start + BATCH],
                height=height,
                width=width,
                channels=channels,
            )
            self.skipped.extend(bad)
            if not kept:
                continue
            pixels = np.stack(images)
            self.cache.append(pixels)
            self.kept.extend(kept)
            yield DecodedBatch(
                samples=kept, pixels=pixels, done=min(start + BATCH, total), total=total
            )


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
    dataset: Dataset,
    evaluated: list[Sample],
    kept: list[Sample],
    cache: DecodedCache,
    *,
    job: JobSpec,
) -> np.ndarray | None:
    """`job.calibration_samples` images drawn from the whole data set with a fixed seed.

    Drawn images that cannot be decoded are replaced by the next ones in the same seeded
    order, so a few broken files never starve int8 of calibration data. Images already
    decoded for evaluation are read back from the cache, not decoded again.
    """
    from core.errors import ImageDecodeError
    from core.inputs.images import decode_image
    from core.inputs.presets import apply_preset

    height, width, channels = cache.shape
    position = {s.index: i for i, s in enumerate(kept)}
    evaluated_ids = {s.index for s in evaluated}
    order = np.random.default_rng(job.seed + 1).permutation(len(dataset.samples))
    chosen: list[np.ndarray] = []
    for i in order:
        if len(chosen) >= job.calibration_samples:
            break
        sample = dataset.samples[int(i)]
        if sample.index in position:
            chosen.append(cache.read(position[sample.index]))
        elif sample.index not in evaluated_ids:  # evaluated but undecodable: skip it
            try:
                chosen.append(
                    decode_image(sample.path, height=height, width=width, channels=channels)
                )
            except ImageDecodeError:
                continue
    if not chosen:
        return None
    return apply_preset(np.stack(chosen), job.preset).astype(np.float32)


def first_images(run: RunContext, count: int) -> np.ndarray:
    """The first `count` evaluation images, preprocessed (float32 [N,H,W,C])."""
    from core.inputs.presets import apply_preset

    cache = DecodedCache(run.run_dir / DECODED_CACHE, run.image_shape)
    first = next(cache.batches(count))
    return apply_preset(first, run.job.preset).astype(np.float32)
