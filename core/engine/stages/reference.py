"""The reference stage: the original model on every decoded batch (streamed with decode).

Writes samples.csv, skipped.csv, reference.probs.npy, .calibration.npy and .decoded.json; the
last one marks the stage done, so a restarted worker reads these back instead of running again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from core.engine.faults import maybe_inject
from core.engine.stages.context import RunContext
from core.engine.stages.decode import DecodedImages, calibration_set
from core.engine.stages.files import save_npy, write_csv
from core.errors import DatasetError
from core.inputs import rundir
from core.jobs.protocol import CALIBRATION_CACHE, DECODE_STATE
from core.metrics.agreement import outputs_are_probabilities, to_probabilities, top1
from core.types import Sample, SkippedSample


@dataclass(frozen=True)
class ReferenceOutputs:
    """What later stages need from the original's pass, rows in samples.csv order."""

    probs: np.ndarray  # float64 [N, C]
    softmax: bool  # logits were softmaxed; every variant inherits this decision
    labels: np.ndarray  # int64 [N], -1 where a sample has no label
    sample_indices: list[int]  # data set index of each row
    calibration: np.ndarray | None  # float32 preprocessed calibration images

    @property
    def labels_or_none(self) -> np.ndarray | None:
        return self.labels if (self.labels >= 0).any() else None


def run_reference(
    run: RunContext, *, on_decoded: Callable[[int], None] | None = None
) -> ReferenceOutputs:
    """Decode every evaluation image once and run the original on each batch as it comes.

    `on_decoded(count)` hears how many images the decoded cache holds after each batch (the
    convert stage starts its first conversion from the first ones).
    """
    from core.inputs.presets import apply_preset

    saved = saved_reference(run)
    if saved is not None:
        return saved
    decoded = DecodedImages(run)
    outputs: list[np.ndarray] = []
    for batch in decoded.batches():
        if on_decoded is not None:
            on_decoded(len(decoded.kept))
        run.emit(
            "reference",
            batch.done / batch.total,
            f"running the original on {batch.done}/{batch.total} images",
        )
        maybe_inject("reference")
        outputs.append(run.model.predict(apply_preset(batch.pixels, run.job.preset)))
    if not decoded.kept:
        raise nothing_decoded(len(decoded.evaluated), decoded.skipped)
    calibration = calibration_set(
        run.dataset, decoded.evaluated, decoded.kept, decoded.cache, job=run.job
    )
    result = reference_outputs(np.concatenate(outputs), decoded.kept, calibration)
    write_reference(run, result, decoded.kept, decoded.skipped)
    return result


def reference_outputs(
    raw: np.ndarray, kept: list[Sample], calibration: np.ndarray | None
) -> ReferenceOutputs:
    """The original's raw outputs [N, C] on the `kept` samples, as every later stage reads them."""
    # Logits or probabilities is decided here, once, from the original's outputs; every
    # variant inherits the decision (a quantized softmax must not be softmaxed again).
    softmax = not outputs_are_probabilities(raw)
    return ReferenceOutputs(
        probs=to_probabilities(raw, softmax=softmax),
        softmax=softmax,
        labels=np.asarray([-1 if s.label is None else s.label for s in kept], dtype=np.int64),
        sample_indices=[s.index for s in kept],
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
        probs=np.load(probs_path).astype(np.float64),
        softmax=bool(state["softmax"]),
        labels=np.asarray(state["labels"], dtype=np.int64),
        sample_indices=indices,
        calibration=np.load(run.run_dir / CALIBRATION_CACHE) if state["has_calibration"] else None,
    )


def write_reference(
    run: RunContext,
    result: ReferenceOutputs,
    samples: list[Sample],
    skipped: list[SkippedSample],
) -> None:
    """The stage's files and report.json's reference and data counts; the state file last."""
    _write_sample_tables(run, result, samples, skipped)
    save_npy(run.run_dir / rundir.REFERENCE_PROBS, result.probs.astype(np.float32))
    _note_in_report(run, result, samples, skipped)
    run.report.save()
    if result.calibration is not None:
        save_npy(run.run_dir / CALIBRATION_CACHE, result.calibration)
    # Written last: its presence tells a restarted worker that everything above is on disk.
    rundir.write_json_atomic(
        run.run_dir / DECODE_STATE,
        {
            "labels": result.labels.tolist(),
            "has_calibration": result.calibration is not None,
            "softmax": result.softmax,
        },
    )


def _write_sample_tables(
    run: RunContext,
    result: ReferenceOutputs,
    samples: list[Sample],
    skipped: list[SkippedSample],
) -> None:
    """samples.csv (the original's top-1, its probability and margin per sample), skipped.csv."""
    probs = result.probs
    ref_top1 = top1(probs)
    ordered = np.sort(np.nan_to_num(probs, nan=-1.0), axis=1)
    margin = ordered[:, -1] - (ordered[:, -2] if probs.shape[1] > 1 else 0.0)
    top_prob = np.take_along_axis(
        np.nan_to_num(probs, nan=np.nan), np.maximum(ref_top1, 0)[:, None], axis=1
    )[:, 0]
    write_csv(
        run.run_dir / rundir.SAMPLES,
        {
            "index": result.sample_indices,
            "relpath": [s.relpath for s in samples],
            "label": ["" if s.label is None else s.label for s in samples],
            "ref_top1": ref_top1,
            "ref_top1_prob": top_prob,
            "ref_margin": margin,
        },
    )
    write_csv(
        run.run_dir / rundir.SKIPPED,
        {"relpath": [s.relpath for s in skipped], "reason": [s.reason for s in skipped]},
    )


def _note_in_report(
    run: RunContext,
    result: ReferenceOutputs,
    samples: list[Sample],
    skipped: list[SkippedSample],
) -> None:
    """The original's accuracy, the logits decision, the data counts and warnings."""
    from core.reporting.report import near_chance

    probs, labels = result.probs, result.labels
    ref_top1 = top1(probs)
    report = run.report.data
    labelled = labels >= 0
    reference = report["reference"]
    reference["softmax_applied"] = result.softmax
    report["warnings"].extend(nonfinite_warnings(probs, "the original model"))
    reference["accuracy_pct"] = (
        float(100.0 * np.mean(ref_top1[labelled] == labels[labelled])) if labelled.any() else None
    )
    dataset = report["dataset"]
    dataset["num_samples"] = len(samples)
    dataset["num_skipped"] = len(skipped)
    dataset["skipped"] = [s.to_dict() for s in skipped]
    classes = probs.shape[1]
    if near_chance(reference["accuracy_pct"], classes):
        report["warnings"].append(
            f"the original model is only {reference['accuracy_pct']:.1f}% accurate on these "
            f"labels (chance is {100.0 / classes:.1f}%): the preprocessing preset or the labels "
            "are probably wrong"
        )


def nonfinite_warnings(outputs: np.ndarray, who: str) -> list[str]:
    """A one-line warning when some of a model's [N, C] outputs hold NaN or Inf, else none."""
    bad = int((~np.isfinite(outputs).all(axis=1)).sum())
    if not bad:
        return []
    return [
        f"{who} outputs NaN/Inf on {bad} of {len(outputs)} images; "
        "they count as disagreements and are left out of the probability deltas"
    ]
