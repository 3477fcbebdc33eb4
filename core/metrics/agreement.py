"""Compare a TFLite variant's outputs with the reference model's: per-sample records and metrics."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from core.types import Agreement

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

# DESIGN §6: a row is a distribution when it sums to 1 within this tolerance.
SUM_TOLERANCE = 1e-3
# KL(ref||tfl) clips the TFLite probabilities here so a hard zero gives a large, finite value.
KL_EPSILON = 1e-12
Z95 = 1.959963984540054
TOP_K = 5  # the k of top-k agreement unless a caller asks for another


def _as_2d_float(outputs: npt.ArrayLike, name: str) -> FloatArray:
    arr = np.asarray(outputs, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D [N, C] array, got shape {arr.shape}")
    return arr


def _bad_rows(arr: FloatArray) -> BoolArray:
    """Rows holding any NaN or Inf: such an output cannot be compared."""
    return np.asarray(~np.isfinite(arr).all(axis=1), dtype=np.bool_)


@dataclass(frozen=True)
class OutputForm:
    """What a model's raw [N, C] outputs look like, gathered batch by batch (`output_form`).

    `in_range`: every finite value lies in [0, 1]; `sums_to_one`: every all-finite row sums to
    1 within 1e-3 (rows holding NaN or Inf are left out of both).
    """

    columns: int
    in_range: bool = True
    sums_to_one: bool = True

    def combine(self, other: OutputForm) -> OutputForm:
        """The form of both batches together."""
        return OutputForm(
            columns=other.columns,
            in_range=self.in_range and other.in_range,
            sums_to_one=self.sums_to_one and other.sums_to_one,
        )

    @property
    def probabilities(self) -> bool:
        """Already probabilities: a distribution per row, or one column of P(class 1)."""
        return self.in_range and (self.columns == 1 or self.sums_to_one)

    @property
    def multi_label(self) -> bool:
        """Several independent scores in [0, 1] (sigmoids) that do not sum to 1: a multi-label
        head, which has no single top-1 class to agree on."""
        return self.columns > 1 and self.in_range and not self.sums_to_one


def output_form(outputs: np.ndarray) -> OutputForm:
    """The `OutputForm` of one batch of a model's [N, C] outputs.

    Raises:
        ValueError: if `outputs` is not 2-D.
    """
    arr = _as_2d_float(outputs, "outputs")
    good = arr[~_bad_rows(arr)]
    if good.size == 0:
        return OutputForm(columns=arr.shape[1])
    return OutputForm(
        columns=arr.shape[1],
        in_range=bool(np.all((good >= 0.0) & (good <= 1.0))),
        sums_to_one=bool(np.all(np.abs(good.sum(axis=1) - 1.0) <= SUM_TOLERANCE)),
    )


def outputs_are_probabilities(outputs: np.ndarray) -> bool:
    """Whether a model's [N, C] outputs already are probabilities (DESIGN §6).

    They are when every finite value lies in [0, 1] and every all-finite row sums to 1
    within 1e-3; rows holding NaN or Inf are left out of the decision. A one-column output
    (one sigmoid: P(class 1)) is a probability when it lies in [0, 1], else a logit. Ask this
    once, of the reference model, and apply the answer to every variant (`to_probabilities`):
    a quantized variant's softmax output sits on a 1/256 grid whose rows miss 1 by more than
    1e-3, and asking it again would softmax its probabilities a second time.

    Raises:
        ValueError: if `outputs` is not 2-D.
    """
    return output_form(outputs).probabilities


def probability_columns(output_columns: int) -> int:
    """How many classes a model with this output width scores: a one-column head is binary."""
    return 2 if output_columns == 1 else output_columns


def to_probabilities(outputs: np.ndarray, *, softmax: bool) -> np.ndarray:
    """A model's [N, C] outputs as float64 probabilities, softmaxed or not as decided.

    The decision is the reference model's (`outputs_are_probabilities`), taken once and
    applied to every model of the run, never re-guessed from a variant's own output. Rows
    holding NaN or Inf become all-NaN either way, so they can never agree with anything.

    A one-column output is a binary classifier's P(class 1): it becomes the two-class
    distribution [1 - p, p] (p the sigmoid of the value when the reference emits logits; the
    sigmoid of x is the softmax of the logits [0, x]), so top-1, agreement, deltas and KL
    compare both classes. Read as one column, top-1 would always be class 0.

    Args:
        outputs: [N, C] model outputs (already dequantized if the model is quantized).
        softmax: True when the reference emits logits: softmax every row (a sigmoid for one
            column).

    Raises:
        ValueError: if `outputs` is not 2-D.
    """
    arr = _as_2d_float(outputs, "outputs")
    if arr.shape[1] == 1:
        # P(class 0) is 1 - p; as logits, class 0's logit is 0 (softmax of [0, x] = sigmoid).
        base = np.zeros_like(arr) if softmax else 1.0 - arr
        arr = np.concatenate([base, arr], axis=1)
    bad = _bad_rows(arr)
    probs = arr.copy()
    good = arr[~bad]
    if softmax and good.size:
        # Subtracting the row max keeps exp() from overflowing on large logits.
        e = np.exp(good - good.max(axis=1, keepdims=True))
        probs[~bad] = e / e.sum(axis=1, keepdims=True)
    probs[bad] = np.nan
    return probs


def top1(probs: np.ndarray) -> np.ndarray:
    """Index of the largest probability per row (int64).

    Ties go to the lowest index (np.argmax keeps the first maximum); rows holding NaN or
    Inf get -1, which matches no class.
    """
    arr = _as_2d_float(probs, "probs")
    out = np.full(arr.shape[0], -1, dtype=np.int64)
    if arr.shape[1] == 0:
        return out
    bad = _bad_rows(arr)
    out[~bad] = np.argmax(arr[~bad], axis=1)
    return out


def topk_indices(probs: np.ndarray, k: int) -> np.ndarray:
    """The k most probable class indices per row, most probable first ([N, k] int64).

    k is clipped to the number of classes. The sort is stable, so ties go to the lowest
    index. Rows holding NaN or Inf are all -1.

    Raises:
        ValueError: if k < 1.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    arr = _as_2d_float(probs, "probs")
    k = min(k, arr.shape[1])
    out = np.full((arr.shape[0], k), -1, dtype=np.int64)
    bad = _bad_rows(arr)
    order = np.argsort(-arr[~bad], axis=1, kind="stable")[:, :k]
    out[~bad] = order
    return out


def wilson_interval(successes: int, n: int, *, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion, as fractions in [0, 1].

    Unlike the normal approximation it stays inside [0, 1] and is honest at 0 % and 100 %,
    which is exactly where agreement numbers live. n == 0 gives the uninformative (0, 1).

    Raises:
        ValueError: if not 0 <= successes <= n.
    """
    if n < 0 or successes < 0 or successes > n:
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n))
    # At 0 % and 100 % the bound is exactly 0 or 1; pin it so rounding cannot exclude p itself.
    lo = 0.0 if successes == 0 else max(0.0, center - half)
    hi = 1.0 if successes == n else min(1.0, center + half)
    return lo, hi


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value on the discordant pairs.

    Args:
        b: samples the reference got right and the TFLite model got wrong.
        c: samples the reference got wrong and the TFLite model got right.

    Returns:
        min(1, 2 * P(X <= min(b, c))) with X ~ Binomial(b + c, 1/2); 1.0 when b + c == 0.

    Raises:
        ValueError: if b or c is negative.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    # scipy.stats.binom.cdf computes this very ufunc (min(b, c) < n here); scipy.stats itself
    # costs a job about a CPU-second to import, scipy.special a third of that.
    from scipy.special._ufuncs import _binom_cdf

    return float(min(1.0, 2.0 * float(_binom_cdf(min(b, c), n, 0.5))))


@dataclass(frozen=True)
class SampleRecords:
    """Per-sample comparison of one variant with the reference; every array has length N.

    A model's top-1 is -1 (and its top-1 probability NaN) on rows where its own output held
    NaN/Inf; `agree` is False and every delta is NaN on rows where either output did.
    """

    ref_top1: IntArray
    ref_top1_prob: FloatArray
    ref_margin: FloatArray  # reference top-1 minus top-2 probability
    tfl_top1: IntArray
    tfl_top1_prob: FloatArray  # TFLite's probability of its own top-1
    agree: BoolArray
    max_abs_delta: FloatArray  # max over classes |p_ref - p_tfl|
    top1_prob_delta: FloatArray  # p_tfl[ref_top1] - p_ref[ref_top1]
    kl: FloatArray  # KL(ref || tfl), natural log

    def __len__(self) -> int:
        return int(self.agree.shape[0])


def _prob_at(arr: FloatArray, idx: IntArray) -> FloatArray:
    """arr[i, idx[i]] per row, NaN where idx is -1."""
    out = np.full(arr.shape[0], np.nan, dtype=np.float64)
    ok = idx >= 0
    out[ok] = arr[np.nonzero(ok)[0], idx[ok]]
    return out


def _margin(arr: FloatArray) -> FloatArray:
    """Top-1 minus top-2 probability per row (top-1 itself for a one-class model)."""
    out = np.full(arr.shape[0], np.nan, dtype=np.float64)
    if arr.shape[1] == 0:
        return out
    ok = ~_bad_rows(arr)
    ranked = -np.sort(-arr[ok], axis=1)
    second = ranked[:, 1] if arr.shape[1] > 1 else np.zeros(ranked.shape[0])
    out[ok] = ranked[:, 0] - second
    return out


def sample_records(ref_probs: np.ndarray, tfl_probs: np.ndarray) -> SampleRecords:
    """Per-sample records of a variant against the reference (both as probabilities).

    Raises:
        ValueError: if the arrays are not 2-D or their shapes differ.
    """
    ref = _as_2d_float(ref_probs, "ref_probs")
    tfl = _as_2d_float(tfl_probs, "tfl_probs")
    if ref.shape != tfl.shape:
        raise ValueError(
            f"reference and TFLite outputs differ in shape: {ref.shape} vs {tfl.shape}"
        )
    bad = _bad_rows(ref) | _bad_rows(tfl)
    ref_top1 = top1(ref)
    tfl_top1 = top1(tfl)
    agree = np.asarray((ref_top1 == tfl_top1) & ~bad, dtype=np.bool_)

    with np.errstate(invalid="ignore"):
        diff = np.abs(ref - tfl)
    max_abs = np.full(ref.shape[0], np.nan, dtype=np.float64)
    if ref.shape[1]:
        max_abs[~bad] = diff[~bad].max(axis=1)

    top1_delta = _prob_at(tfl, ref_top1) - _prob_at(ref, ref_top1)
    top1_delta[bad] = np.nan

    kl = np.full(ref.shape[0], np.nan, dtype=np.float64)
    r, t = ref[~bad], tfl[~bad]
    positive = r > 0.0
    # 0 * log 0 = 0: terms with p_ref == 0 contribute nothing, whatever p_tfl is.
    safe_r = np.where(positive, r, 1.0)
    terms = np.where(positive, r * (np.log(safe_r) - np.log(np.clip(t, KL_EPSILON, None))), 0.0)
    # KL is >= 0 in exact arithmetic; float32 rows that sum to 1 only within rounding give
    # values like -1e-8 for identical distributions. Clamp so no reader sees a negative KL.
    kl[~bad] = np.maximum(terms.sum(axis=1), 0.0)

    return SampleRecords(
        ref_top1=ref_top1,
        ref_top1_prob=_prob_at(ref, ref_top1),
        ref_margin=_margin(ref),
        tfl_top1=tfl_top1,
        tfl_top1_prob=_prob_at(tfl, tfl_top1),
        agree=agree,
        max_abs_delta=max_abs,
        top1_prob_delta=top1_delta,
        kl=kl,
    )


def _nan_stat(values: FloatArray, how: str) -> float:
    """nanmax / nanmean without the all-NaN RuntimeWarning: NaN when nothing is finite."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan
    return float(finite.max() if how == "max" else finite.mean())


def agreement(
    ref_probs: np.ndarray,
    tfl_probs: np.ndarray,
    *,
    labels: np.ndarray | None = None,
    k: int = TOP_K,
) -> Agreement:
    """Aggregate metrics of one variant against the reference (DESIGN §6).

    Args:
        ref_probs: [N, C] reference probabilities (see `to_probabilities`).
        tfl_probs: [N, C] TFLite probabilities, dequantized.
        labels: optional [N] int class labels; negative entries mean "unlabelled" and are
            left out of the accuracy figures.
        k: top-k size; clipped to C.

    Returns:
        An `Agreement`. Percentages (and the Wilson 95 % interval) are 0..100.
        `nan_outputs` counts samples where either output held NaN/Inf; they are
        disagreements but stay out of the flip matrix, so
        `disagreements == sum(flip_matrix) + nan_outputs`.
        Accuracy fields are None unless at least one sample is labelled.

    Raises:
        ValueError: on shape mismatches, N == 0, or k < 1.
    """
    records = sample_records(ref_probs, tfl_probs)
    n, num_classes = np.shape(ref_probs)
    if n == 0:
        raise ValueError("agreement needs at least one sample; got an empty output array")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(k, num_classes)
    return agreement_of_records(
        records, topk_hits(records, tfl_probs, k), num_classes=num_classes, k=k, labels=labels
    )


def topk_hits(records: SampleRecords, tfl_probs: np.ndarray, k: int) -> BoolArray:
    """Per sample: the original's top-1 is among the variant's top-k (False on NaN rows).

    `records` and `tfl_probs` cover the same rows; a caller streaming batches asks per batch.
    """
    valid = (records.ref_top1 >= 0) & (records.tfl_top1 >= 0)
    tfl = np.asarray(tfl_probs, dtype=np.float64)
    topk = topk_indices(tfl, min(k, tfl.shape[1]))
    hits: BoolArray = (topk == records.ref_top1[:, None]).any(axis=1) & valid
    return hits


def concat_records(parts: list[SampleRecords]) -> SampleRecords:
    """The records of consecutive batches as one (each field concatenated in order)."""
    return SampleRecords(
        **{
            f.name: np.concatenate([getattr(p, f.name) for p in parts])
            for f in dataclasses.fields(SampleRecords)
        }
    )


def agreement_of_records(
    records: SampleRecords,
    in_topk: BoolArray,
    *,
    num_classes: int,
    k: int,
    labels: np.ndarray | None = None,
) -> Agreement:
    """`agreement` from per-sample records and top-k hits: no [N, C] array is needed, so an
    engine that streams batches keeps only these N-long columns."""
    n = len(records)
    if n == 0:
        raise ValueError("agreement needs at least one sample; got an empty output array")
    agree_count = int(records.agree.sum())
    lo, hi = wilson_interval(agree_count, n)

    valid = (records.ref_top1 >= 0) & (records.tfl_top1 >= 0)
    flips = np.zeros((num_classes, num_classes), dtype=np.int64)
    flipped = valid & ~records.agree
    np.add.at(flips, (records.ref_top1[flipped], records.tfl_top1[flipped]), 1)

    ref_acc = tfl_acc = acc_delta = p_value = None
    labelled_n = 0
    if labels is not None:
        lab = np.asarray(labels)
        if lab.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {lab.shape}")
        lab = lab.astype(np.int64)
        labelled = lab >= 0
        labelled_n = int(labelled.sum())
        if labelled_n:
            # A NaN row has top-1 -1, which never equals a label: it counts as wrong.
            ref_ok = (records.ref_top1 == lab)[labelled]
            tfl_ok = (records.tfl_top1 == lab)[labelled]
            ref_acc = 100.0 * float(ref_ok.mean())
            tfl_acc = 100.0 * float(tfl_ok.mean())
            acc_delta = tfl_acc - ref_acc
            p_value = mcnemar_exact(int((ref_ok & ~tfl_ok).sum()), int((~ref_ok & tfl_ok).sum()))

    return Agreement(
        n=n,
        top1_agreement_pct=100.0 * agree_count / n,
        top1_agreement_ci95=(100.0 * lo, 100.0 * hi),
        k=k,
        topk_agreement_pct=100.0 * float(in_topk.sum()) / n,
        disagreements=n - agree_count,
        max_abs_prob_delta=_nan_stat(records.max_abs_delta, "max"),
        mean_abs_top1_prob_delta=_nan_stat(np.abs(records.top1_prob_delta), "mean"),
        mean_kl=_nan_stat(records.kl, "mean"),
        nan_outputs=int((~valid).sum()),
        flip_matrix=tuple(tuple(int(v) for v in row) for row in flips),
        reference_accuracy_pct=ref_acc,
        tflite_accuracy_pct=tfl_acc,
        accuracy_delta_pct=acc_delta,
        mcnemar_p=p_value,
        labelled_n=labelled_n,
    )


# The variant's per-sample CSV columns after `index`, in file order (see core/rundir.py).
RECORD_COLUMNS = ("tfl_top1", "tfl_top1_prob", "agree", "max_abs_delta", "top1_prob_delta", "kl")


def records_table(records: SampleRecords) -> dict[str, np.ndarray]:
    """The variant's per-sample CSV columns, in file order (see core/rundir.py)."""
    return {name: getattr(records, name) for name in RECORD_COLUMNS}


# A quantized variant's disagreement with the original is "conversion"-caused when the float32
# TFLite pivot already disagrees on that image, "quantization"-caused when the pivot agrees.
CAUSE_CONVERSION = "conversion"
CAUSE_QUANTIZATION = "quantization"


def disagreement_causes(variant_agree: np.ndarray, pivot_agree: np.ndarray) -> np.ndarray:
    """Per sample, why a quantized variant disagrees with the original ("" where it agrees).

    Both arguments are `SampleRecords.agree` arrays against the same original, so a row where
    any model output NaN/Inf already counts as a disagreement: a NaN from the quantized
    variant alone is quantization-caused, a NaN from the pivot (or the original) is
    conversion-caused. Every disagreement gets exactly one cause, so the two counts of
    `split_counts` always add up to the variant's disagreements.

    Raises:
        ValueError: if the arrays differ in shape.
    """
    variant = np.asarray(variant_agree, dtype=np.bool_)
    pivot = np.asarray(pivot_agree, dtype=np.bool_)
    if variant.shape != pivot.shape:
        raise ValueError(
            f"variant and pivot cover different samples: {variant.shape} vs {pivot.shape}"
        )
    causes = np.full(variant.shape, "", dtype=object)
    causes[~variant & ~pivot] = CAUSE_CONVERSION
    causes[~variant & pivot] = CAUSE_QUANTIZATION
    return causes


def split_counts(causes: np.ndarray) -> dict[str, int]:
    """The report's `disagreement_split`: how many disagreements each cause explains."""
    values = np.asarray(causes, dtype=object)
    return {
        CAUSE_CONVERSION: int((values == CAUSE_CONVERSION).sum()),
        CAUSE_QUANTIZATION: int((values == CAUSE_QUANTIZATION).sum()),
    }


def delta_stats(values: np.ndarray) -> dict[str, float | int | None]:
    """n, mean, p99 and largest |value| of one per-sample delta column (NaN left out).

    Returns:
        {"n", "mean", "p99", "max |value|"} (the Probability deltas table's columns); the
        statistics are None for an empty column.
    """
    v = np.asarray(values, dtype=float)
    if not len(v):
        return {"n": 0, "mean": None, "p99": None, "max |value|": None}
    return {
        "n": len(v),
        "mean": float(np.nanmean(v)),
        "p99": float(np.nanpercentile(v, 99)),
        "max |value|": float(np.nanmax(np.abs(v))),
    }


@dataclass(frozen=True)
class AccuracyBaseline:
    """The original's accuracy against always answering the labels' most common class.

    `p_value` is the one-sided binomial test of `correct` of `n` against the majority rate:
    how likely a model no better than "always the majority class" is to score this well.
    """

    majority_class: int
    majority_count: int
    n: int  # labelled images
    correct: int  # of them, how many the original got right
    p_value: float

    @property
    def rate_pct(self) -> float:
        return 100.0 * self.majority_count / self.n

    @property
    def accuracy_pct(self) -> float:
        return 100.0 * self.correct / self.n

    def text(self) -> str:
        """The baseline in words: `majority class 7 at 52.0 % of n=400`."""
        return f"majority class {self.majority_class} at {self.rate_pct:.1f} % of n={self.n}"

    def to_dict(self) -> dict[str, int | float]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AccuracyBaseline:
        return cls(
            majority_class=int(data["majority_class"]),
            majority_count=int(data["majority_count"]),
            n=int(data["n"]),
            correct=int(data["correct"]),
            p_value=float(data["p_value"]),
        )


def accuracy_baseline(labels: np.ndarray, predictions: np.ndarray) -> AccuracyBaseline | None:
    """The original's accuracy tested against the labels' majority-class rate.

    Args:
        labels: [N] int labels, negative where a sample has none (left out).
        predictions: [N] the original's top-1 (-1 on a NaN row, which is wrong).

    Returns:
        None when no sample is labelled. With all labels one class the rate is 100 % and
        nothing can beat it (p = 1).
    """
    lab = np.asarray(labels, dtype=np.int64)
    pred = np.asarray(predictions, dtype=np.int64)
    labelled = lab >= 0
    n = int(labelled.sum())
    if not n:
        return None
    counts = np.bincount(lab[labelled])
    majority = int(np.argmax(counts))  # ties go to the lowest class
    correct = int((pred[labelled] == lab[labelled]).sum())
    # P(X >= correct): what scipy.stats.binomtest(alternative="greater") computes, through
    # the same ufunc, without scipy.stats's import (about a CPU-second of every job's start).
    from scipy.special._ufuncs import _binom_sf

    rate = float(counts[majority]) / n
    p_value = 1.0 if correct == 0 else float(_binom_sf(correct - 1, n, rate))
    return AccuracyBaseline(
        majority_class=majority,
        majority_count=int(counts[majority]),
        n=n,
        correct=correct,
        p_value=p_value,
    )
