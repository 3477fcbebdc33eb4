"""The evaluate stage: each converted model on the decoded images, then its row in report.json.

The work itself is `evaluate_converted`, the local engine: it runs a list of converted models
on the decoded images and writes each one's per-sample files (<variant>.samples.csv,
<variant>.probs.npy). Another engine (a cluster) replaces it by passing its own `Evaluator`
to `run_evaluation`; the report rows, verdicts and progress stay the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from core.engine.convert import ConversionResult
from core.engine.faults import maybe_inject
from core.engine.runtime import evaluation_batch
from core.engine.stages.context import RunContext
from core.engine.stages.convert import Conversion
from core.engine.stages.files import DecodedCache, save_npy, write_csv
from core.engine.stages.reference import ReferenceOutputs, nonfinite_warnings
from core.errors import QuantLensError
from core.inputs import rundir
from core.jobs.protocol import DECODED_CACHE
from core.metrics.agreement import (
    agreement,
    disagreement_causes,
    records_table,
    sample_records,
    split_counts,
    to_probabilities,
)
from core.types import Mode, VariantSpec


@dataclass(frozen=True)
class EvaluatedVariant:
    """A converted model's outputs on every evaluation image, its per-sample files written."""

    spec: VariantSpec
    conversion: ConversionResult
    outputs: np.ndarray  # float32 [N, C] as the model gave them (dequantized)
    probs: np.ndarray  # [N, C] after the original's logits-or-probabilities decision
    causes: np.ndarray | None  # per sample "conversion" / "quantization" / "", or no split
    io: dict[str, Any]  # the interpreter's input/output types (TFLiteRunner.describe)


@dataclass(frozen=True)
class FailedVariant:
    """A variant that did not convert or would not run; `error` is the one-line reason."""

    spec: VariantSpec
    error: str


VariantOutcome = EvaluatedVariant | FailedVariant


class Evaluator(Protocol):
    """Runs converted models on the decoded images and yields one outcome per conversion.

    Outcomes come in the order of `conversions` (the pivot first), each after its per-sample
    files are written; `on_start(spec)` is called before a variant's work begins, so a crash
    is blamed on the right one.
    """

    def __call__(
        self,
        run: RunContext,
        reference: ReferenceOutputs,
        conversions: Sequence[Conversion],
        *,
        on_start: Callable[[VariantSpec], None],
    ) -> Iterator[VariantOutcome]: ...


def run_evaluation(
    run: RunContext,
    reference: ReferenceOutputs,
    conversions: Sequence[Conversion],
    *,
    evaluator: Evaluator | None = None,
) -> None:
    """Evaluate every conversion (locally unless another `evaluator` is given) and record each
    outcome in report.json as soon as it arrives."""

    def started(spec: VariantSpec) -> None:
        run.report.variant(spec.name)["status"] = "running"
        run.report.save()

    evaluate = evaluator or evaluate_converted
    for outcome in evaluate(run, reference, conversions, on_start=started):
        if isinstance(outcome, FailedVariant):
            record_failure(run, outcome)
        else:
            record_result(run, reference, outcome)


def evaluate_converted(
    run: RunContext,
    reference: ReferenceOutputs,
    conversions: Sequence[Conversion],
    *,
    on_start: Callable[[VariantSpec], None],
) -> Iterator[VariantOutcome]:
    """The local engine: each converted model, in turn, on the decoded images, in batches."""
    for conversion in conversions:
        spec = conversion.spec
        on_start(spec)
        try:
            if not conversion.done():
                run.emit("convert", 0.0, f"waiting for {spec.name} to convert", spec.name)
            result = conversion.result()
            outputs, io = tflite_outputs(run, result.tflite, spec.name)
            evaluated = evaluated_variant(run, reference, spec, result, outputs, io)
        except QuantLensError as exc:
            yield FailedVariant(spec=spec, error=str(exc))
            continue
        yield evaluated


def evaluated_variant(
    run: RunContext,
    reference: ReferenceOutputs,
    spec: VariantSpec,
    conversion: ConversionResult,
    outputs: np.ndarray,
    io: dict[str, Any],
) -> EvaluatedVariant:
    """A converted model's raw outputs [N, C] (rows as in samples.csv), its files written.

    Every engine ends a variant here, so the files and the probabilities are built one way.
    """
    probs = to_probabilities(outputs, softmax=reference.softmax)
    causes = write_variant_samples(run, reference, spec, probs)
    return EvaluatedVariant(
        spec=spec, conversion=conversion, outputs=outputs, probs=probs, causes=causes, io=io
    )


def tflite_outputs(run: RunContext, tflite: bytes, name: str) -> tuple[np.ndarray, dict[str, Any]]:
    """One model's float outputs [N, C] on every decoded image, and its I/O description.

    Runs several small images per invoke where the model's batch dimension allows it (the
    numbers equal batch 1's: tests/core/test_runtime_batch.py); large images, and models with
    a fixed batch, run one per invoke (core.engine.runtime.evaluation_batch says why).
    """
    from core.engine.runtime import TFLiteRunner
    from core.inputs.presets import apply_preset

    run.emit("infer", 0.0, f"{name}: preparing the interpreter", name)
    maybe_inject("infer", name)
    batch = evaluation_batch(int(np.prod(run.image_shape)))
    runner = TFLiteRunner(tflite, threads=run.threads, name=f"{name}.tflite", batch=batch)
    cache = DecodedCache(run.run_dir / DECODED_CACHE, run.image_shape)
    total = len(cache)
    rows = np.empty((total, run.model.signature.num_classes), dtype=np.float32)
    done = 0
    last_report = 0.0
    for pixels in cache.batches():
        outputs = runner.run_batch(apply_preset(pixels, run.job.preset))
        rows[done : done + len(outputs)] = outputs
        done += len(outputs)
        if time.monotonic() - last_report > 0.5 or done == total:
            last_report = time.monotonic()
            run.emit("infer", done / total, f"{name}: ran {done}/{total} images", name)
    return rows, runner.describe()


def write_variant_samples(
    run: RunContext, reference: ReferenceOutputs, spec: VariantSpec, probs: np.ndarray
) -> np.ndarray | None:
    """Write <variant>.samples.csv and <variant>.probs.npy; return the disagreement causes."""
    records = sample_records(reference.probs, probs)
    columns: dict[str, Any] = {"index": reference.sample_indices}
    columns.update(records_table(records))
    causes = _disagreement_causes(run, spec, records.agree)
    if causes is not None:
        columns["cause"] = causes
    write_csv(rundir.variant_samples_path(run.run_dir, spec.name), columns)
    save_npy(rundir.probs_path(run.run_dir, spec.name), probs.astype(np.float32))
    return causes


def _disagreement_causes(
    run: RunContext, spec: VariantSpec, agree: np.ndarray
) -> np.ndarray | None:
    """Per sample, "conversion", "quantization" or "" for a quantized variant; None when
    the variant is float32 or the pivot has no outputs (it failed)."""
    pivot = run.report.pivot
    if spec.mode is Mode.FLOAT32 or not pivot:
        return None
    path = rundir.variant_samples_path(run.run_dir, pivot)
    if run.report.variant(pivot)["status"] != "done" or not path.exists():
        return None
    # The pivot's own written `agree` column, so the split matches what its row reports.
    return disagreement_causes(agree, written_agreement(run, pivot))


def written_agreement(run: RunContext, name: str) -> np.ndarray:
    """A finished variant's per-sample top-1 agreement [N] bool, as its samples file says."""
    import csv

    with rundir.variant_samples_path(run.run_dir, name).open(encoding="utf-8") as f:
        return np.array([row["agree"] == "1" for row in csv.DictReader(f)], dtype=bool)


def record_result(run: RunContext, reference: ReferenceOutputs, done: EvaluatedVariant) -> None:
    """The variant's finished row in report.json (metrics, verdict), then its progress event."""
    from core.reporting.report import finished_variant, verdict

    name, result = done.spec.name, done.conversion
    metrics = agreement(reference.probs, done.probs, labels=reference.labels_or_none)
    entry = finished_variant(
        run.report.variant(name),
        size_bytes=result.size_bytes,
        reference_size=run.report.data["reference"]["size_bytes"],
        agreement=metrics,
        num_classes=done.probs.shape[1],
        min_agreement_pct=run.job.min_agreement_pct,
        conversion_seconds=result.seconds,
        conversion_cached=result.cached,
        conversion_route=result.route,
        select_tf_ops_used=result.select_tf_ops_used,
        softmax_applied=reference.softmax,
        io=done.io,
        warnings=nonfinite_warnings(done.outputs, "the converted model")
        + _split_warnings(run, done.spec, done.causes),
        disagreement_split=None if done.causes is None else split_counts(done.causes),
        verdict_rule=run.job.verdict,
    )
    run.report.replace_variant(entry)
    run.report.save()
    run.emit(
        "variant",
        1.0,
        f"{name}: {metrics.top1_agreement_pct:.2f}% agreement (n={metrics.n}) {verdict(entry)}",
        name,
    )


def record_failure(run: RunContext, failed: FailedVariant) -> None:
    name = failed.spec.name
    entry = run.report.variant(name)
    entry["status"] = "failed"
    entry["error"] = failed.error
    run.report.save()
    run.emit("variant", 1.0, f"{name} failed: {failed.error}", name)


def _split_warnings(run: RunContext, spec: VariantSpec, causes: np.ndarray | None) -> list[str]:
    if causes is not None or spec.mode is Mode.FLOAT32 or not run.report.pivot:
        return []
    return [
        "no conversion/quantization split: the float32 TFLite pivot did not finish (see its error)"
    ]
