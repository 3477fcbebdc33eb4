"""Measuring a model on the run's images: the run's runner (its preset, threads and batch),
and a candidate's agreement and mean KL against the original, the numbers the sensitivity
scan, auto-fix's search and the calibration sweep rank and record by
(core.engine.selective.Measurement).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from core.engine.stages.context import RunContext
from core.engine.stages.files import DecodedCache
from core.engine.stages.reference import ReferenceOutputs
from core.runfolder.protocol import DECODED_CACHE

if TYPE_CHECKING:
    from core.engine.runtime import TFLiteRunner
    from core.engine.selective import Measurement


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
