"""The selection images: where every fix candidate is measured.

The fix search measures each candidate `.tflite` on the seeded selection half of the
evaluation images only (core.engine.fixes.search.split_rows), read from the decoded-image
cache, or on --engine ray (no cache on the head) decoded once here by the same decoder; and
times it briefly for the Pareto set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from core.engine.stages.context import RunContext
from core.engine.stages.diagnose import row_samples
from core.engine.stages.measure import measure_tflite, measurement
from core.engine.stages.reference import ReferenceOutputs

if TYPE_CHECKING:
    from core.engine.fixes.keep_float import Measurement

CANDIDATE_LATENCY_RUNS = 20  # batch-1 invocations timed per measured candidate (p50 only)


class SelectionBench:
    """Measures a candidate `.tflite` against the original on the selection rows."""

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
        """The selection images as decoded (uint8): from the cache, or on --engine ray decoded
        here once."""
        if self._pixels is None:
            if self.run.job.engine != "ray":
                from core.engine.stages.files import DecodedCache
                from core.runfolder.protocol import DECODED_CACHE

                cache = DecodedCache(self.run.run_dir / DECODED_CACHE, self.run.image_shape)
                self._pixels = np.stack([cache.read(p) for p in self.rows])
            else:
                from core.engine.stages.diagnose import decode_sample

                samples = row_samples(self.run, self.reference)
                self._pixels = np.stack([decode_sample(self.run, samples[p]) for p in self.rows])
        return self._pixels

    def images(self) -> np.ndarray:
        """The selection images preprocessed as the model is fed (float32)."""
        from core.inputs.presets import apply_preset

        return apply_preset(self.pixels(), self.run.job.preset).astype(np.float32)


def p50_ms(tflite: bytes, image_shape: tuple[int, int, int]) -> float:
    """A candidate's median single-image latency on one thread (a quick look for the Pareto
    set; the derived variant is timed by the time stage with the full protocol)."""
    from core.engine.runtime import TFLiteRunner
    from core.engine.timing import time_invocations

    model = TFLiteRunner(tflite, threads=1, name="candidate")
    invoke = model.timed_invoke(np.zeros(image_shape, dtype=np.float32))
    times = time_invocations(invoke, runs=CANDIDATE_LATENCY_RUNS, warmup=3)
    return float(np.median(times))
