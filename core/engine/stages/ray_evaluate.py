"""The Ray stage (--engine ray): decode, reference and evaluate in one pass on a Ray cluster.

It replaces the decode, reference and evaluate stages. The head (this worker) joins the cluster
first, so a wrong address fails in seconds, not after every conversion. It decodes only what
conversion needs (the probe images, into the decoded cache where the time stage also finds its
image, and the calibration set) and converts every pending variant, one after another.
core.engine.ray_engine then runs the original and every variant on the cluster's shards, and
the outputs are recorded by the local stages' own functions (reference.record_reference,
evaluate.evaluated_variant, record_result, record_failure), so the files and the numbers are
the local engine's. Time and finish then run on the head as usual.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from core.engine.convert import PROBE_IMAGES, ConversionResult
from core.engine.faults import maybe_inject
from core.engine.stages.context import RunContext
from core.engine.stages.convert import convert_in_background
from core.engine.stages.decode import DecodedImages, calibration_set, first_images
from core.engine.stages.evaluate import (
    FailedVariant,
    evaluated_variant,
    record_failure,
    record_result,
)
from core.engine.stages.reference import (
    ReferenceOutputs,
    nothing_decoded,
    record_reference,
    saved_reference,
)
from core.errors import QuantLensError
from core.inputs import rundir
from core.types import NEEDS_CALIBRATION, Sample, VariantSpec

if TYPE_CHECKING:
    from core.engine import ray_engine
    from core.engine.ray_engine import Evaluation


@dataclass(frozen=True)
class ConvertedOnHead:
    """A variant converted on the head, its interpreter prepared there once."""

    spec: VariantSpec
    conversion: ConversionResult
    io: dict[str, Any]  # the interpreter's input/output types (TFLiteRunner.describe)


def evaluate_on_ray(run: RunContext) -> ReferenceOutputs:
    """Convert on the head, evaluate on the cluster, record the original and every variant.

    Returns the original's outputs, as the reference stage does; afterwards no variant is
    pending (each one is done or failed).

    Raises:
        ClusterUnavailable: the cluster cannot be joined, or cannot evaluate the original.
        DatasetError: none of the evaluation images decodes.
    """
    from core.engine import ray_engine

    saved = saved_reference(run)  # a restarted worker keeps the original's recorded outputs
    if saved is not None and not run.pending():
        # Restarted with every variant already recorded: the decoded cache still holds the
        # probe images the time stage reads, so the cluster is not needed.
        return saved
    with ray_engine.job_session(run.job) as cluster:
        engine = cluster.engine_info()
        run.report.put(engine)
        run.report.save()
        decoded = _decode_probe(run)
        # Nothing is cached for calibration here: every drawn image is decoded afresh, which
        # yields the images the local engine reads back from its cache (undecodable ones are
        # skipped the same way).
        calibration = (
            saved.calibration
            if saved is not None
            else calibration_set(run, decoded.plan, [], decoded.cache)
        )
        converted = _convert_pending(run, calibration)
        run.emit("evaluate", 0.0, f"evaluating on Ray ({cluster.cpus} CPUs)")
        evaluation = _evaluate_on_cluster(run, decoded.evaluated, converted)
        run.report.put(replace(engine, batches_by_node=evaluation.batches_by_node))
        run.report.save()
    reference = saved if saved is not None else _record_reference(run, evaluation, calibration)
    if [s.index for s in evaluation.kept] != reference.sample_indices:
        raise QuantLensError(
            "the Ray pass decoded other images than this run's first pass; the data set "
            "changed while the run was restarted: start a new run"
        )
    for item in converted:  # the pivot first, as run.pending() orders them
        _record_variant(run, reference, item, evaluation)
    left = [s.name for s in run.pending()]
    if left:  # the local stages that follow would evaluate them on the probe images alone
        raise RuntimeError(f"the Ray stage left {', '.join(left)} pending")
    return reference


def evaluate_added_on_ray(run: RunContext, reference: ReferenceOutputs, rows: list[Sample]) -> None:
    """Variants added after the cluster pass (--auto-fix's derived ones): convert each pending
    one on the head, evaluate it on the cluster on the rows the original was recorded on
    (`rows`, in samples.csv order), and record it as the first pass does."""
    from core.engine import ray_engine

    with ray_engine.job_session(run.job):
        converted = _convert_pending(run, reference.calibration)
        if not converted:
            return
        evaluation = _evaluate_on_cluster(run, rows, converted)
    check_same_rows(evaluation, reference)
    for item in converted:
        _record_variant(run, reference, item, evaluation)


def check_same_rows(evaluation: Evaluation, reference: ReferenceOutputs) -> None:
    """A later cluster pass (auto-fix's variants, the sweep's points) must have decoded the
    images the original was recorded on, in the same order, or no row would compare."""
    if [s.index for s in evaluation.kept] != reference.sample_indices:
        raise QuantLensError(
            "the Ray pass decoded other images than this run's first pass; the data set "
            "changed during the run: start a new run"
        )


def reference_source(run: RunContext) -> ray_engine.ReferenceSource:
    """Where the cluster's workers load the original from, and how."""
    from core.engine import ray_engine

    job = run.job
    return ray_engine.ReferenceSource(
        path=run.model.path,
        trusted=job.trusted,
        signature_key=job.signature_key,
        input_size=(job.input_size[0], job.input_size[1]) if job.input_size else None,
    )


def _decode_probe(run: RunContext) -> DecodedImages:
    """Decode the first evaluation images, until PROBE_IMAGES of them are in the decoded cache.

    Conversion checks each new model on these (its probe), and the time stage times on the
    first one; the cluster decodes the whole set.
    """
    decoded = DecodedImages(run)
    for _ in decoded.batches():
        if len(decoded.kept) >= PROBE_IMAGES:
            break
    if not decoded.kept:
        raise nothing_decoded(len(decoded.evaluated), decoded.skipped)
    return decoded


def _convert_pending(run: RunContext, calibration: np.ndarray | None) -> list[ConvertedOnHead]:
    """Convert each pending variant on this thread; one that fails is recorded as failed."""
    probe = first_images(run, PROBE_IMAGES)
    converted: list[ConvertedOnHead] = []
    for spec in run.pending():
        try:
            result = convert_in_background(
                run, spec, calibration if spec.mode in NEEDS_CALIBRATION else None, probe
            )
            # Prepared here once: a model the kernels refuse fails alone, as it does locally.
            io = _interpreter_io(run, spec.name, result.tflite)
        except QuantLensError as exc:
            record_failure(run, FailedVariant(spec=spec, error=str(exc)))
            continue
        # Left pending, not "running", through the cluster pass: a crash of this process then
        # is the head's, and the supervisor must not blame it on a variant (core.jobs.crash);
        # a variant that crashes a Ray worker fails alone there (core.engine.ray_engine).
        converted.append(ConvertedOnHead(spec=spec, conversion=result, io=io))
    return converted


def _interpreter_io(run: RunContext, name: str, tflite: bytes) -> dict[str, Any]:
    from core.engine.runtime import TFLiteRunner

    return TFLiteRunner(tflite, threads=run.threads, name=f"{name}.tflite").describe()


def _evaluate_on_cluster(
    run: RunContext, samples: list[Sample], converted: list[ConvertedOnHead]
) -> Evaluation:
    """The original and every converted variant on `samples`, on the open Ray session."""
    from core.engine import ray_engine

    job = run.job
    source = reference_source(run)
    variants = [(c.spec.name, rundir.tflite_path(run.run_dir, c.spec)) for c in converted]

    def shard_progress(done: int, total: int) -> None:
        message = f"ran the original and {len(variants)} variants on {done}/{total} images"
        run.emit("evaluate", done / max(total, 1), message)
        maybe_inject("evaluate")  # a crash of the head itself, between shards

    evaluation = ray_engine.evaluate(
        samples,
        preset=job.preset,
        image_shape=run.image_shape,
        reference=source,
        variants=variants,
        progress=shard_progress,
        address=job.ray_address,
    )
    if not evaluation.kept:
        raise nothing_decoded(len(samples), evaluation.skipped)
    return evaluation


def _record_reference(
    run: RunContext, evaluation: Evaluation, calibration: np.ndarray | None
) -> ReferenceOutputs:
    """The reference stage's files and report entries, from the cluster's outputs."""
    skipped = [*run.dataset.skipped, *evaluation.skipped]  # as the decode stage lists them
    return record_reference(run, evaluation.reference, evaluation.kept, skipped, calibration)


def _record_variant(
    run: RunContext, reference: ReferenceOutputs, item: ConvertedOnHead, evaluation: Evaluation
) -> None:
    """The evaluate stage's files and report row for one variant, or its failure."""
    name = item.spec.name
    try:
        if name in evaluation.errors:
            raise QuantLensError(evaluation.errors[name])
        done = evaluated_variant(
            run, reference, item.spec, item.conversion, evaluation.variants[name], item.io
        )
    except QuantLensError as exc:
        record_failure(run, FailedVariant(spec=item.spec, error=str(exc)))
        return
    record_result(run, reference, done)
