"""The convert stage: each pending variant's .tflite, converted on a background thread.

Conversions run one after another on a second thread (the converter releases the GIL) while
the main thread evaluates each converted model. They start after the original's pass, so the
two largest memory users never overlap: peak memory is one conversion's, whatever the number
of images. Writes <variant>.tflite, and .converting while a conversion is in flight.
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
from core.jobs.protocol import EXIT_OOM, clear_converting, mark_converting
from core.types import NEEDS_CALIBRATION, VariantSpec


@dataclass(frozen=True)
class Conversion:
    """A variant whose conversion was started; `result()` waits for it (or raises its error)."""

    spec: VariantSpec
    future: Future[ConversionResult]

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> ConversionResult:
        return self.future.result()


@contextmanager
def conversions_started(
    run: RunContext, specs: list[VariantSpec], reference: ReferenceOutputs
) -> Iterator[list[Conversion]]:
    """Start converting `specs` in order on one background thread; yields one Conversion each.

    Leaving the block cancels conversions not started yet and does not wait for a running one
    (the worker exits right after a failure, and a finished run has none left).
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantlens-convert")
    probe = first_images(run, PROBE_IMAGES)
    try:
        yield [
            Conversion(
                spec=spec,
                future=pool.submit(
                    convert_in_background,
                    run,
                    spec,
                    reference.calibration if spec.mode in NEEDS_CALIBRATION else None,
                    probe,
                ),
            )
            for spec in specs
        ]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def convert_in_background(
    run: RunContext, spec: VariantSpec, calibration: np.ndarray | None, probe: np.ndarray
) -> ConversionResult:
    """Convert one variant on the conversion thread and write its .tflite file.

    `probe` holds a few evaluation images the new model must answer with finite outputs.

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
    rundir.write_atomic(rundir.tflite_path(run.run_dir, name), result.tflite)
    run.emit("convert", 1.0, f"converted {name} ({result.size_bytes / 1e6:.2f} MB)", name)
    return result
