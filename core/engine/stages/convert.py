"""The convert stage: each pending variant's .tflite, converted on a background thread.

Conversions run one after another on a second thread (the converter releases the GIL). The
thread starts with the original's pass, not after it: a variant that does not calibrate (the
float32 pivot first, which every quantizer recipe starts from) converts while the original runs,
as soon as the probe images are decoded; a variant that calibrates waits for the calibration
set, which exists when the pass ends. The main thread then evaluates each converted model in
turn. Peak memory is the original's pass plus one conversion, whatever the number of images.
Writes <variant>.tflite, and .converting while a conversion is in flight.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from core.engine.convert import PROBE_IMAGES, ConversionResult
from core.engine.faults import maybe_inject
from core.engine.stages.context import RunContext
from core.engine.stages.decode import first_images
from core.engine.stages.reference import ReferenceOutputs
from core.inputs import rundir
from core.runfolder.protocol import EXIT_OOM, clear_converting, mark_converting
from core.types import NEEDS_CALIBRATION, Mode, VariantSpec

# The float32 pivot (the converter's float32, no options): what every quantizer recipe starts from.
FLOAT32 = VariantSpec(mode=Mode.FLOAT32)


@dataclass(frozen=True)
class Conversion:
    """A variant whose conversion was started; `result()` waits for it (or raises its error)."""

    spec: VariantSpec
    future: Future[ConversionResult]

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> ConversionResult:
        return self.future.result()


class ConversionsAbandoned(Exception):
    """The original's pass failed, so conversions still waiting for its outputs never start."""


class ConversionInputs:
    """What conversions need from the decode and reference stages, handed over as it comes.

    The probe images (the first PROBE_IMAGES evaluation images, which each conversion must
    answer finitely) once that many are decoded; the calibration set when the pass ends.
    """

    def __init__(self) -> None:
        self._probe: Future[np.ndarray] = Future()
        self._calibration: Future[np.ndarray | None] = Future()
        # The float32 pivot's conversion once made on the conversion thread: every quantizer
        # recipe starts from it (rather than reading it back from the cache and running the
        # probe check again per recipe). Set and read on that one thread.
        self.float32: ConversionResult | None = None

    @classmethod
    def ready(cls, run: RunContext, reference: ReferenceOutputs) -> ConversionInputs:
        """The inputs of a finished reference stage, all handed over at once."""
        inputs = cls()
        inputs.reference_done(run, reference)
        return inputs

    def images_decoded(self, run: RunContext, count: int) -> None:
        """`count` evaluation images are in the decoded cache: hand the probe over once it is
        complete (the same images a probe read after the whole pass would hold)."""
        if count >= PROBE_IMAGES and not self._probe.done():
            self._probe.set_result(first_images(run, PROBE_IMAGES))

    def reference_done(self, run: RunContext, reference: ReferenceOutputs) -> None:
        if not self._probe.done():  # fewer than PROBE_IMAGES images decoded: all of them
            self._probe.set_result(first_images(run, PROBE_IMAGES))
        self._calibration.set_result(reference.calibration)

    def abandon(self) -> None:
        """Release a conversion thread waiting for inputs that will never come."""
        for future in (self._probe, self._calibration):
            if not future.done():
                future.set_exception(ConversionsAbandoned())

    def probe(self) -> np.ndarray:
        return self._probe.result()

    def calibration_for(self, spec: VariantSpec) -> np.ndarray | None:
        """The calibration set for a mode that calibrates (waiting for the pass), else None."""
        return self._calibration.result() if spec.mode in NEEDS_CALIBRATION else None


@contextmanager
def conversions_started(
    run: RunContext, specs: list[VariantSpec], inputs: ConversionInputs | ReferenceOutputs
) -> Iterator[list[Conversion]]:
    """Start converting `specs` in order on one background thread; yields one Conversion each.

    `inputs` may still be filling (the original's pass runs inside the block), or be a
    finished reference stage's outputs. Leaving the block releases conversions waiting for
    inputs, cancels those not started and does not wait for a running one (the worker exits
    right after a failure, and a finished run has none left).
    """
    if isinstance(inputs, ReferenceOutputs):
        inputs = ConversionInputs.ready(run, inputs)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantlens-convert")
    try:
        yield [
            Conversion(spec=spec, future=pool.submit(_convert_when_ready, run, spec, inputs))
            for spec in specs
        ]
    finally:
        inputs.abandon()
        pool.shutdown(wait=False, cancel_futures=True)


def _convert_when_ready(
    run: RunContext, spec: VariantSpec, inputs: ConversionInputs
) -> ConversionResult:
    """On the conversion thread: wait for what this variant needs, then convert it."""
    probe = inputs.probe()
    result = convert_in_background(
        run, spec, inputs.calibration_for(spec), probe, float32=inputs.float32
    )
    if spec == FLOAT32:
        inputs.float32 = result
    return result


def convert_in_background(
    run: RunContext,
    spec: VariantSpec,
    calibration: np.ndarray | None,
    probe: np.ndarray,
    *,
    float32: ConversionResult | None = None,
) -> ConversionResult:
    """Convert one variant on the conversion thread and write its .tflite file.

    `probe` holds a few evaluation images the new model must answer with finite outputs;
    `float32` is the run's float32 conversion when already made (a quantizer recipe's start).

    The conversion marker names this variant and this thread while it runs: the supervisor
    blames a crash on this thread on the variant, and one on the main thread on the running one.
    """
    from core.engine.backends import tflite_from_reference

    name = spec.name
    mark_converting(run.run_dir, name)
    run.emit("convert", 0.0, f"converting to {name}", name)
    try:
        maybe_inject("convert", name)
        result = tflite_from_reference(
            run.model,
            spec,
            model_sha256=run.model_sha,
            calibration=calibration,
            preset=str(run.job.preset),
            probe=probe,
            cache_dir=run.cache_dir,
            float32=float32,
        )
    except MemoryError:
        # Out of memory in the converter: end the worker at once with the marker still
        # naming this variant, as a native crash would; the supervisor reports it and
        # restarts the worker for the other variants.
        import os
        import sys

        sys.stderr.write(f"MemoryError: out of memory while converting {name}\n")
        sys.stderr.flush()
        os._exit(EXIT_OOM)
    finally:
        clear_converting(run.run_dir)
    rundir.write_atomic(rundir.tflite_path(run.run_dir, spec), result.tflite)
    run.emit("convert", 1.0, f"converted {name} ({result.size_bytes / 1e6:.2f} MB)", name)
    return result
