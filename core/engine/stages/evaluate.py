"""The evaluate stage: each converted model on the decoded images, then its row in report.json.

The work itself is `evaluate_converted`, the local engine: it runs a list of converted models
on the decoded images and writes each one's per-sample files (<variant>.samples.csv,
<variant>.probs.npy). The Ray engine (stages.ray_evaluate) evaluates on its cluster and
records its outcomes with this module's `record_result` / `record_failure`, so the report rows,
verdicts and progress stay the same.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.engine.convert import ConversionResult
from core.engine.faults import maybe_inject
from core.engine.stages.context import RunContext
from core.engine.stages.convert import Conversion
from core.engine.stages.files import BATCH, CsvAppender, DecodedCache, NpyAppender
from core.engine.stages.measure import run_runner
from core.engine.stages.reference import ReferenceOutputs, nonfinite_warning
from core.errors import QuantLensError
from core.inputs import rundir
from core.metrics.agreement import (
    RECORD_COLUMNS,
    TOP_K,
    SampleRecords,
    agreement_of_records,
    concat_records,
    disagreement_causes,
    records_table,
    sample_records,
    split_counts,
    to_probabilities,
    topk_hits,
)
from core.runfolder.protocol import DECODED_CACHE
from core.types import Agreement, Mode, VariantSpec, VariantStatus


@dataclass(frozen=True)
class EvaluatedVariant:
    """A converted model evaluated on every image, its per-sample files written.

    It holds the aggregates only; the per-sample outputs are on disk (<variant>.probs.npy,
    <variant>.samples.csv), written batch by batch, so memory does not grow with the data set.
    """

    spec: VariantSpec
    conversion: ConversionResult
    metrics: Agreement  # against the original, from every sample
    num_classes: int
    nonfinite: int  # samples where the model's own outputs held NaN/Inf
    causes: np.ndarray | None  # per sample "conversion" / "quantization" / "", or no split
    io: dict[str, Any]  # the interpreter's input/output types (TFLiteRunner.describe)


@dataclass(frozen=True)
class FailedVariant:
    """A variant that did not convert or would not run; `error` is the one-line reason."""

    spec: VariantSpec
    error: str


VariantOutcome = EvaluatedVariant | FailedVariant


def run_evaluation(
    run: RunContext, reference: ReferenceOutputs, conversions: Sequence[Conversion]
) -> None:
    """Evaluate every conversion locally and record each outcome in report.json as soon as it
    arrives (outcomes come in the order of `conversions`, the pivot first)."""

    def started(spec: VariantSpec) -> None:
        run.report.set_result(spec.name, status=VariantStatus.RUNNING)
        run.report.save()

    for outcome in evaluate_converted(run, reference, conversions, on_start=started):
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
        writer: VariantWriter | None = None
        try:
            if not conversion.done():
                run.emit("convert", 0.0, f"waiting for {spec.name} to convert", spec.name)
            result = conversion.result()
            writer = VariantWriter(run, reference, spec)
            io = tflite_outputs(run, result.tflite, spec.name, writer.add)
            evaluated = writer.finish(result, io)
        except QuantLensError as exc:
            if writer is not None:
                writer.discard()  # a failed variant leaves no half-written per-sample files
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
    """A converted model's raw outputs [N, C] gathered whole (rows as in samples.csv), its
    files written through the same `VariantWriter` as the local engine's batches."""
    writer = VariantWriter(run, reference, spec)
    for start in range(0, len(outputs), BATCH):
        writer.add(outputs[start : start + BATCH])
    return writer.finish(conversion, io)


class VariantWriter:
    """One variant's per-sample files, written as its output batches arrive, and the N-long
    columns its metrics need (no [N, C] array is kept: memory stays flat as N grows).

    <variant>.samples.csv and <variant>.probs.npy always hold every batch added so far; a
    crashed worker's restart evaluates the variant again and rewrites them.
    """

    def __init__(self, run: RunContext, reference: ReferenceOutputs, spec: VariantSpec) -> None:
        self.reference = reference
        self.spec = spec
        self.pivot_agree = _pivot_agreement(run, spec)
        names = ["index", *RECORD_COLUMNS] + (["cause"] if self.pivot_agree is not None else [])
        self.table = CsvAppender(rundir.variant_samples_path(run.run_dir, spec), names)
        self.probs = NpyAppender(
            rundir.probs_path(run.run_dir, spec), len(reference), reference.num_classes
        )
        self.records: list[SampleRecords] = []
        self.topk: list[np.ndarray] = []
        self.nonfinite = 0
        self.done = 0  # rows added so far

    def add(self, outputs: np.ndarray) -> None:
        """The model's raw outputs for the next rows: compared, appended to both files."""
        start = self.done
        stop = start + len(outputs)
        probs = to_probabilities(outputs, softmax=self.reference.softmax)
        records = sample_records(self.reference.prob_rows(start, stop), probs)
        columns: dict[str, Any] = {"index": self.reference.sample_indices[start:stop]}
        columns.update(records_table(records))
        if self.pivot_agree is not None:
            columns["cause"] = disagreement_causes(records.agree, self.pivot_agree[start:stop])
        self.table.append(columns)
        self.probs.append(probs)
        self.records.append(records)
        self.topk.append(topk_hits(records, probs, TOP_K))
        self.nonfinite += int((~np.isfinite(outputs).all(axis=1)).sum())
        self.done = stop

    def finish(self, conversion: ConversionResult, io: dict[str, Any]) -> EvaluatedVariant:
        """The variant's metrics from every row added (all of the original's rows)."""
        if self.done != len(self.reference):
            raise QuantLensError(
                f"{self.spec.name} gave outputs for {self.done} of {len(self.reference)} "
                "images; run it again"
            )
        records = concat_records(self.records)
        metrics = agreement_of_records(
            records,
            np.concatenate(self.topk),
            num_classes=self.reference.num_classes,
            k=min(TOP_K, self.reference.num_classes),
            labels=self.reference.labels_or_none,
        )
        causes = (
            None
            if self.pivot_agree is None
            else disagreement_causes(records.agree, self.pivot_agree)
        )
        return EvaluatedVariant(
            spec=self.spec,
            conversion=conversion,
            metrics=metrics,
            num_classes=self.reference.num_classes,
            nonfinite=self.nonfinite,
            causes=causes,
            io=io,
        )

    def discard(self) -> None:
        self.table.path.unlink(missing_ok=True)
        self.probs.path.unlink(missing_ok=True)


def tflite_outputs(
    run: RunContext, tflite: bytes, name: str, sink: Callable[[np.ndarray], None]
) -> dict[str, Any]:
    """Run one model on every decoded image, handing each batch's float outputs to `sink` as
    it comes; returns the model's I/O description.

    Runs several small images per invoke where the model's batch dimension allows it (the
    numbers equal batch 1's: tests/core/test_runtime_batch.py); large images, and models with
    a fixed batch, run one per invoke (core.engine.runtime.evaluation_batch says why).
    """
    run.emit("infer", 0.0, f"{name}: preparing the interpreter", name)
    maybe_inject("infer", name)
    runner = run_runner(run, tflite, name=f"{name}.tflite")
    cache = DecodedCache(run.run_dir / DECODED_CACHE, run.image_shape)
    total = len(cache)
    done = 0
    last_report = 0.0
    for outputs in runner.outputs(cache.batches()):
        sink(outputs)
        done += len(outputs)
        if time.monotonic() - last_report > 0.5 or done == total:
            last_report = time.monotonic()
            run.emit("infer", done / total, f"{name}: ran {done}/{total} images", name)
    return runner.describe()


def _pivot_agreement(run: RunContext, spec: VariantSpec) -> np.ndarray | None:
    """The pivot's per-sample agreement a quantized variant is split against; None when the
    variant is float32 or the pivot has no outputs (it failed)."""
    pivot = run.report.pivot
    if spec.mode is Mode.FLOAT32 or not pivot:
        return None
    path = rundir.variant_samples_path(run.run_dir, run.report.files_of(pivot))
    if run.report.variant(pivot)["status"] != VariantStatus.DONE or not path.exists():
        return None
    # The pivot's own written `agree` column, so the split matches what its row reports.
    return written_agreement(run, run.report.files_of(pivot))


def written_agreement(run: RunContext, variant: rundir.HasFileId) -> np.ndarray:
    """A finished variant's per-sample top-1 agreement [N] bool, as its samples file says."""
    import csv

    with rundir.variant_samples_path(run.run_dir, variant).open(encoding="utf-8") as f:
        return np.array([row["agree"] == "1" for row in csv.DictReader(f)], dtype=bool)


def record_result(run: RunContext, reference: ReferenceOutputs, done: EvaluatedVariant) -> None:
    """The variant's finished row in report.json (metrics, verdict), then its progress event."""
    from core.engine.flatbuffer import float_ops
    from core.reporting.report import finished_variant, verdict
    from core.reporting.sections.variant import Variant

    name, result, metrics = done.spec.name, done.conversion, done.metrics
    entry = finished_variant(
        run.report.variant(name),
        size_bytes=result.size_bytes,
        reference_size=run.report.reference["size_bytes"],
        agreement=metrics,
        reference=run.report.reference,
        min_agreement_pct=run.job.min_agreement_pct,
        conversion_seconds=result.seconds,
        conversion_cached=result.cached,
        conversion_route=result.route,
        select_tf_ops_used=result.select_tf_ops_used,
        softmax_applied=reference.softmax,
        io=done.io,
        warnings=nonfinite_warning(done.nonfinite, metrics.n, "the converted model")
        + _split_warnings(run, done.spec, done.causes)
        + _scope_warnings(done.spec, result.tflite),
        disagreement_split=None if done.causes is None else split_counts(done.causes),
        verdict_rule=run.job.verdict,
    )
    done_variant = Variant.from_dict(entry)
    run.report.put_variant(done_variant)
    # What was done, read back from the file.
    run.report.set_part(name, "float_ops", float_ops(result.tflite))
    run.report.save()
    run.emit(
        "variant",
        1.0,
        f"{name}: {metrics.top1_agreement_pct:.2f}% agreement (n={metrics.n}) {verdict(done_variant)}",
        name,
    )


RAW_SCOPE_NAMES = (
    "layer names are the model's raw op scopes (not Keras 3 `<layer>_<n>` scopes); "
    "float_ops lists the ops kept in float"
)


def _scope_warnings(spec: VariantSpec, tflite: bytes) -> list[str]:
    """A variant keeping layers in float by name, on a model whose scopes are not Keras 3's:
    its names were matched to the raw scopes (core.engine.quantizer.keras3_scopes)."""
    from core.engine.flatbuffer import op_outputs
    from core.engine.quantizer import keras3_scopes

    if not spec.float_layers or keras3_scopes(n for _, n in op_outputs(tflite)):
        return []
    return [RAW_SCOPE_NAMES]


def record_failure(run: RunContext, failed: FailedVariant) -> None:
    name = failed.spec.name
    run.report.set_result(name, status=VariantStatus.FAILED, error=failed.error)
    run.report.save()
    run.emit("variant", 1.0, f"{name} failed: {failed.error}", name)


def _split_warnings(run: RunContext, spec: VariantSpec, causes: np.ndarray | None) -> list[str]:
    if causes is not None or spec.mode is Mode.FLOAT32 or not run.report.pivot:
        return []
    return [
        "no conversion/quantization split: the float32 TFLite pivot did not finish (see its error)"
    ]
