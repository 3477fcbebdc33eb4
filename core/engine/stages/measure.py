"""Measuring a model on the run's images: the run's runner (its preset, threads and batch),
and a candidate's agreement and mean KL against the original, the numbers the sensitivity
scan, auto-fix's search and the calibration sweep rank and record by
(core.engine.fixes.keep_float.Measurement).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from core.engine.stages.context import RunContext
from core.engine.stages.files import DecodedCache
from core.engine.stages.reference import ReferenceOutputs
from core.runfolder.protocol import DECODED_CACHE

if TYPE_CHECKING:
    from core.engine.fixes.keep_float import Measurement
    from core.engine.runtime import TFLiteRunner


def run_runner(
    run: RunContext,
    tflite: bytes,
    *,
    name: str,
    threads: int | None = None,
    kernels: str = "xnnpack",
) -> TFLiteRunner:
    """A runner for one of the run's models on its decoded-image cache: the run's preset, its
    threads (unless given), and as many images per invoke as the image size allows."""
    from core.engine.runtime import Kernels, TFLiteRunner, evaluation_batch

    return TFLiteRunner(
        tflite,
        threads=run.threads if threads is None else threads,
        name=name,
        batch=evaluation_batch(int(np.prod(run.image_shape))),
        kernels=Kernels(kernels),
        preset=run.job.preset,
    )


def measure_tflite(
    run: RunContext,
    reference: ReferenceOutputs,
    tflite: bytes,
    *,
    limit: int | None = None,
    rows: Sequence[int] | None = None,
) -> Measurement:
    """Agreement and mean KL of a model against the original on the first `limit` evaluation
    images (all of them when None), or on the images at row positions `rows`, read from the
    run's decoded-image cache."""
    if rows is not None:
        return _measure_rows(run, reference, tflite, rows)
    model = run_runner(run, tflite, name="candidate")
    cache = DecodedCache(run.run_dir / DECODED_CACHE, run.image_shape)
    total = len(cache) if limit is None else min(limit, len(cache))
    outputs: list[np.ndarray] = []
    done = 0
    for pixels in cache.batches():
        chunk = pixels[: total - done]
        outputs.append(model.infer(chunk))
        done += len(chunk)
        if done >= total:
            break
    return measurement(reference, np.concatenate(outputs), len(tflite))


def _measure_rows(
    run: RunContext, reference: ReferenceOutputs, tflite: bytes, rows: Sequence[int]
) -> Measurement:
    model = run_runner(run, tflite, name="candidate")
    cache = DecodedCache(run.run_dir / DECODED_CACHE, run.image_shape)
    outputs = []
    for start in range(0, len(rows), model.batch):
        pixels = np.stack([cache.read(int(p)) for p in rows[start : start + model.batch]])
        outputs.append(model.infer(pixels))
    return measurement(reference, np.concatenate(outputs), len(tflite), rows=rows)


def measurement(
    reference: ReferenceOutputs,
    outputs: np.ndarray,
    size_bytes: int,
    *,
    rows: Sequence[int] | None = None,
) -> Measurement:
    """Agreement and mean KL of a model's raw outputs on the first len(outputs) rows, or on
    the rows at positions `rows` (in that order)."""
    from core.engine.fixes.keep_float import Measurement
    from core.metrics.agreement import sample_records, to_probabilities

    total = len(outputs)
    probs = to_probabilities(outputs, softmax=reference.softmax)
    if rows is None:
        expected = reference.prob_rows(0, total)
    else:
        stored = np.load(reference.probs_path, mmap_mode="r")
        expected = np.asarray(stored[np.asarray(rows, dtype=np.int64)], dtype=np.float64)
    records = sample_records(expected, probs)
    kl = records.kl[np.isfinite(records.kl)]
    return Measurement(
        agreement_pct=float(100.0 * records.agree.mean()),
        mean_kl=float(kl.mean()) if kl.size else float("inf"),
        size_bytes=size_bytes,
        n=total,
    )
