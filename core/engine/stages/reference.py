"""The reference stage: the original model on every decoded batch (streamed with decode).

Writes samples.csv, skipped.csv, reference.probs.npy, .calibration.npy and .decoded.json; the
last one marks the stage done, so a restarted worker reads these back instead of running again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.engine.faults import maybe_inject
from core.engine.stages.context import RunContext
from core.engine.stages.decode import DecodedImages, calibration_set
from core.engine.stages.files import (
    BATCH,
    CsvAppender,
    DecodedCache,
    NpyAppender,
    npy_rows,
    npy_shape,
    save_npy,
    write_csv,
)
from core.errors import DatasetError
from core.inputs import rundir
from core.metrics.agreement import (
    accuracy_baseline,
    outputs_are_probabilities,
    to_probabilities,
    top1,
)
from core.runfolder.protocol import CALIBRATION_CACHE, DECODE_STATE, REFERENCE_OUTPUTS
from core.types import Sample, SkippedSample


@dataclass(frozen=True)
class ReferenceOutputs:
    """What later stages need from the original's pass, rows in samples.csv order.

    The probabilities stay on disk (reference.probs.npy, float32) and are read a batch of rows
    at a time, so no stage holds all N x C of them: memory stays flat as the data set grows.
    """

    probs_path: Path  # reference.probs.npy: float32 [N, C]
    num_classes: int
    softmax: bool  # logits were softmaxed; every variant inherits this decision
    labels: np.ndarray  # int64 [N], -1 where a sample has no label
    sample_indices: list[int]  # data set index of each row
    calibration: np.ndarray | None  # float32 preprocessed calibration images

    def __len__(self) -> int:
        return len(self.sample_indices)

    def prob_rows(self, start: int, stop: int) -> np.ndarray:
        """Probabilities of rows [start, stop) as float64, read from reference.probs.npy."""
        return npy_rows(self.probs_path, start, stop).astype(np.float64)

    @property
    def labels_or_none(self) -> np.ndarray | None:
        return self.labels if (self.labels >= 0).any() else None


def run_reference(
    run: RunContext, *, on_decoded: Callable[[int], None] | None = None
) -> ReferenceOutputs:
    """Decode every evaluation image once and run the original on each batch as it comes.

    Each batch's raw outputs are appended to a scratch file at once; only the logits-or-
    probabilities decision is carried from batch to batch (it holds row by row).
    `on_decoded(count)` hears how many images the decoded cache holds after each batch (the
    convert stage starts its first conversion from the first ones).
    """
    from core.engine.runtime import OriginalRunner

    saved = saved_reference(run)
    if saved is not None:
        return saved
    decoded = DecodedImages(run)
    raw = DecodedCache(
        run.run_dir / REFERENCE_OUTPUTS, (run.model.signature.raw_columns,), np.float32
    )
    raw.path.unlink(missing_ok=True)
    probabilities = True
    original = OriginalRunner(run.model, preset=run.job.preset)
    for batch in decoded.batches():
        if on_decoded is not None:
            on_decoded(len(decoded.kept))
        run.emit(
            "reference",
            batch.done / batch.total,
            f"running the original on {batch.done}/{batch.total} images",
        )
        maybe_inject("reference")
        outputs = original.infer(batch.pixels)
        raw.append(outputs)
        probabilities = probabilities and outputs_are_probabilities(outputs)
    if not decoded.kept:
        raise nothing_decoded(len(decoded.evaluated), decoded.skipped)
    calibration = calibration_set(run, decoded.plan, decoded.kept, decoded.cache)
    return write_reference(
        run,
        raw.batches(),
        softmax=not probabilities,
        samples=decoded.kept,
        skipped=decoded.skipped,
        calibration=calibration,
    )


def record_reference(
    run: RunContext,
    raw: np.ndarray,
    samples: list[Sample],
    skipped: list[SkippedSample],
    calibration: np.ndarray | None,
) -> ReferenceOutputs:
    """The reference stage's files and report entries from the original's raw outputs [N, C]
    held whole (an engine that gathers them elsewhere, e.g. on a cluster)."""
    return write_reference(
        run,
        (raw[start : start + BATCH] for start in range(0, len(raw), BATCH)),
        # Logits or probabilities is decided here, once, from the original's outputs; every
        # variant inherits the decision (a quantized softmax must not be softmaxed again).
        softmax=not outputs_are_probabilities(raw),
        samples=samples,
        skipped=skipped,
        calibration=calibration,
    )


def nothing_decoded(evaluated: int, skipped: list[SkippedSample]) -> DatasetError:
    """The error of a data set none of whose `evaluated` images decodes, with a few reasons."""
    reasons = sorted({s.reason for s in skipped})
    return DatasetError(
        f"none of the {evaluated} images could be decoded "
        f"({'; '.join(reasons[:3])}); check the data set"
    )


def saved_reference(run: RunContext) -> ReferenceOutputs | None:
    """The outputs a crashed worker's reference stage left, or None when it did not finish."""
    import csv

    state_path = run.run_dir / DECODE_STATE
    probs_path = run.run_dir / rundir.REFERENCE_PROBS
    if not (state_path.exists() and probs_path.exists()):
        return None
    state = rundir.read_json(state_path)
    with (run.run_dir / rundir.SAMPLES).open(encoding="utf-8") as f:
        indices = [int(row["index"]) for row in csv.DictReader(f)]
    return ReferenceOutputs(
        probs_path=probs_path,
        num_classes=int(npy_shape(probs_path)[1]),
        softmax=bool(state["softmax"]),
        labels=np.asarray(state["labels"], dtype=np.int64),
        sample_indices=indices,
        calibration=np.load(run.run_dir / CALIBRATION_CACHE) if state["has_calibration"] else None,
    )


SAMPLE_COLUMNS = ["index", "relpath", "label", "ref_top1", "ref_top1_prob", "ref_margin"]


def write_reference(
    run: RunContext,
    raw_batches: Iterable[np.ndarray],
    *,
    softmax: bool,
    samples: list[Sample],
    skipped: list[SkippedSample],
    calibration: np.ndarray | None,
) -> ReferenceOutputs:
    """The stage's files, batch by batch, and report.json's reference and data counts; the
    state file last. `raw_batches` are the original's raw outputs, rows in `samples` order."""
    probs_path = run.run_dir / rundir.REFERENCE_PROBS
    probs_file: NpyAppender | None = None
    table = CsvAppender(run.run_dir / rundir.SAMPLES, SAMPLE_COLUMNS)
    top1_parts: list[np.ndarray] = []
    bad = done = 0
    for raw in raw_batches:
        # Rounded to float32 as stored, so every later comparison reads what the file holds.
        probs = to_probabilities(raw, softmax=softmax).astype(np.float32).astype(np.float64)
        if probs_file is None:
            probs_file = NpyAppender(probs_path, len(samples), probs.shape[1])
        probs_file.append(probs)
        rows = samples[done : done + len(probs)]
        table.append(_sample_columns(probs, rows))
        top1_parts.append(top1(probs))
        bad += int((~np.isfinite(probs).all(axis=1)).sum())
        done += len(probs)
    write_csv(
        run.run_dir / rundir.SKIPPED,
        {"relpath": [s.relpath for s in skipped], "reason": [s.reason for s in skipped]},
    )
    result = ReferenceOutputs(
        probs_path=probs_path,
        num_classes=0 if probs_file is None else probs_file.columns,
        softmax=softmax,
        labels=np.asarray([-1 if s.label is None else s.label for s in samples], dtype=np.int64),
        sample_indices=[s.index for s in samples],
        calibration=calibration,
    )
    _note_in_report(run, result, np.concatenate(top1_parts), bad, skipped)
    run.report.save()
    if calibration is not None:
        save_npy(run.run_dir / CALIBRATION_CACHE, calibration)
    # Written last: its presence tells a restarted worker that everything above is on disk.
    rundir.write_json_atomic(
        run.run_dir / DECODE_STATE,
        {
            "labels": result.labels.tolist(),
            "has_calibration": calibration is not None,
            "softmax": softmax,
        },
    )
    return result


def _sample_columns(probs: np.ndarray, samples: list[Sample]) -> dict[str, Any]:
    """samples.csv's columns for one batch: the original's top-1, its probability, margin."""
    ref_top1 = top1(probs)
    ordered = np.sort(np.nan_to_num(probs, nan=-1.0), axis=1)
    margin = ordered[:, -1] - (ordered[:, -2] if probs.shape[1] > 1 else 0.0)
    top_prob = np.take_along_axis(probs, np.maximum(ref_top1, 0)[:, None], axis=1)[:, 0]
    return {
        "index": [s.index for s in samples],
        "relpath": [s.relpath for s in samples],
        "label": ["" if s.label is None else s.label for s in samples],
        "ref_top1": ref_top1,
        "ref_top1_prob": top_prob,
        "ref_margin": margin,
    }


def _note_in_report(
    run: RunContext,
    result: ReferenceOutputs,
    ref_top1: np.ndarray,
    nonfinite: int,
    skipped: list[SkippedSample],
) -> None:
    """The original's accuracy and its majority-class test, the logits decision, the data
    counts and warnings."""
    from core.reporting.report import no_verdict_reason

    labels = result.labels
    labelled = labels >= 0
    run.report.set_measured("reference", softmax_applied=result.softmax)
    # A re-score runs this stage again on the same images: each warning is said once.
    run.report.add_warnings(nonfinite_warning(nonfinite, len(labels), "the original model"))
    baseline = accuracy_baseline(labels, ref_top1)
    run.report.set_measured(
        "reference",
        accuracy_pct=(
            float(100.0 * np.mean(ref_top1[labelled] == labels[labelled]))
            if labelled.any()
            else None
        ),
        accuracy_baseline=None if baseline is None else baseline.to_dict(),
    )
    run.report.set_measured(
        "dataset",
        num_samples=len(labels),
        num_skipped=len(skipped),
        skipped=[s.to_dict() for s in skipped],
    )
    chance = no_verdict_reason(run.report.reference)
    if chance is not None:
        run.report.add_warnings([chance])


def nonfinite_warning(bad: int, total: int, who: str) -> list[str]:
    """A one-line warning when `bad` of a model's `total` output rows hold NaN or Inf."""
    if not bad:
        return []
    return [
        f"{who} outputs NaN/Inf on {bad} of {total} images; "
        "they count as disagreements and are left out of the probability deltas"
    ]
