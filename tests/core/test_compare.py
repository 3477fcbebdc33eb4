"""Comparison metrics checked against values worked out by hand on small crafted outputs."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.engine.tensors import dequantize
from core.metrics.agreement import (
    SampleRecords,
    accuracy_baseline,
    agreement,
    delta_stats,
    mcnemar_exact,
    output_form,
    outputs_are_probabilities,
    records_table,
    sample_records,
    to_probabilities,
    top1,
    topk_indices,
    wilson_interval,
)

NAN = math.nan
REPO = Path(__file__).resolve().parents[2]

# Four samples, three classes; only sample 3 flips (reference class 0 -> TFLite class 1).
REF = np.array(
    [
        [0.7, 0.2, 0.1],
        [0.1, 0.8, 0.1],
        [0.2, 0.2, 0.6],
        [0.5, 0.4, 0.1],
    ]
)
TFL = np.array(
    [
        [0.6, 0.3, 0.1],
        [0.05, 0.9, 0.05],
        [0.1, 0.3, 0.6],
        [0.3, 0.6, 0.1],
    ]
)


def _wilson_textbook(x: int, n: int, z: float) -> tuple[float, float]:
    """Wilson (1927) in its textbook form, written out independently of core.metrics.agreement."""
    p = x / n
    root = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    lo = (p + z**2 / (2 * n) - root) / (1 + z**2 / n)
    hi = (p + z**2 / (2 * n) + root) / (1 + z**2 / n)
    return lo, hi


def _softmax_row(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


# --- probabilities ---------------------------------------------------------------------------


def test_probabilities_are_kept_as_they_are() -> None:
    assert outputs_are_probabilities(REF.astype(np.float32)) is True
    probs = to_probabilities(REF.astype(np.float32), softmax=False)
    assert probs.dtype == np.float64
    np.testing.assert_allclose(probs, REF, atol=1e-7)


def test_rows_summing_to_one_within_tolerance_are_probabilities() -> None:
    out = np.array([[0.5, 0.5005, 0.0], [0.2, 0.3, 0.4995]])
    assert outputs_are_probabilities(out) is True
    np.testing.assert_array_equal(to_probabilities(out, softmax=False), out)


def test_logits_are_detected_and_softmaxed() -> None:
    out = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    assert outputs_are_probabilities(out) is False
    probs = to_probabilities(out, softmax=True)
    e1, e2, e3 = math.exp(1), math.exp(2), math.exp(3)
    np.testing.assert_allclose(
        probs[0], [e1 / (e1 + e2 + e3), e2 / (e1 + e2 + e3), e3 / (e1 + e2 + e3)]
    )
    np.testing.assert_allclose(probs[1], [1 / 3, 1 / 3, 1 / 3])


def test_in_range_rows_not_summing_to_one_make_the_whole_array_logits() -> None:
    # Row 0 sums to 0.6, so the model does not emit distributions: row 1, which happens to
    # sum to 1, must be softmaxed as well (one decision per model, not per row).
    out = np.array([[0.2, 0.2, 0.2], [0.1, 0.1, 0.8]])
    assert outputs_are_probabilities(out) is False
    probs = to_probabilities(out, softmax=True)
    np.testing.assert_allclose(probs[0], [1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(probs[1], _softmax_row([0.1, 0.1, 0.8]))


def test_huge_logits_do_not_overflow() -> None:
    with np.errstate(over="raise", invalid="raise"):
        probs = to_probabilities(np.array([[1000.0, 0.0], [-1000.0, -999.0]]), softmax=True)
    np.testing.assert_allclose(probs[0], [1.0, 0.0], atol=1e-300)
    np.testing.assert_allclose(probs[1], [1 / (1 + math.e), math.e / (1 + math.e)])


def test_nan_rows_stay_nan_and_do_not_sway_the_decision() -> None:
    out = np.array([[NAN, 0.5, 0.5], [0.3, 0.3, 0.4]])
    assert outputs_are_probabilities(out) is True
    probs = to_probabilities(out, softmax=False)
    assert np.isnan(probs[0]).all()
    np.testing.assert_array_equal(probs[1], [0.3, 0.3, 0.4])


def test_inf_row_becomes_nan_when_logits_are_softmaxed() -> None:
    out = np.array([[math.inf, 0.0, 0.0], [1.0, 2.0, 3.0]])
    assert outputs_are_probabilities(out) is False
    probs = to_probabilities(out, softmax=True)
    assert np.isnan(probs[0]).all()
    np.testing.assert_allclose(probs[1], _softmax_row([1.0, 2.0, 3.0]))


def test_all_nan_outputs_decide_nothing_and_stay_nan() -> None:
    out = np.full((2, 3), NAN)
    assert outputs_are_probabilities(out) is True
    for softmax in (False, True):
        assert np.isnan(to_probabilities(out, softmax=softmax)).all()


def test_non_2d_outputs_are_refused() -> None:
    with pytest.raises(ValueError, match="2-D"):
        to_probabilities(np.zeros(3), softmax=False)
    with pytest.raises(ValueError, match="2-D"):
        outputs_are_probabilities(np.zeros(3))


# --- argmax and top-k ------------------------------------------------------------------------


def test_top1_ties_go_to_lowest_index_and_nan_rows_get_minus_one() -> None:
    probs = np.array(
        [
            [0.4, 0.4, 0.2],
            [0.2, 0.4, 0.4],
            [1 / 3, 1 / 3, 1 / 3],
            [NAN, 0.9, 0.1],
            [0.1, math.inf, 0.0],
        ]
    )
    result = top1(probs)
    assert result.dtype == np.int64
    assert result.tolist() == [0, 1, 0, -1, -1]


def test_topk_is_stable_and_clipped_to_class_count() -> None:
    probs = np.array([[0.25, 0.25, 0.25, 0.25], [0.1, 0.4, 0.1, 0.4], [NAN, 0.0, 0.0, 1.0]])
    assert topk_indices(probs, 3).tolist() == [[0, 1, 2], [1, 3, 0], [-1, -1, -1]]
    assert topk_indices(probs, 10).shape == (3, 4)
    assert topk_indices(probs, 10)[1].tolist() == [1, 3, 0, 2]
    with pytest.raises(ValueError, match="k must be at least 1"):
        topk_indices(probs, 0)


# --- intervals and tests ---------------------------------------------------------------------


def test_wilson_interval_matches_closed_form() -> None:
    z = 1.959963984540054
    for x, n in [(3, 4), (0, 10), (10, 10), (47, 50), (1, 1)]:
        lo, hi = wilson_interval(x, n)
        exp_lo, exp_hi = _wilson_textbook(x, n, z)
        assert lo == pytest.approx(max(0.0, exp_lo), abs=1e-12)
        assert hi == pytest.approx(min(1.0, exp_hi), abs=1e-12)
        assert 0.0 <= lo <= x / n <= hi <= 1.0
    # scipy.stats.binomtest(3, 4).proportion_ci(method="wilson") gives 0.30064 .. 0.95441.
    lo, hi = wilson_interval(3, 4)
    assert (round(lo, 4), round(hi, 4)) == (0.3006, 0.9544)


def test_wilson_interval_edge_cases() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(5, 4)
    with pytest.raises(ValueError):
        wilson_interval(-1, 4)


def test_mcnemar_exact_by_hand() -> None:
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625)  # 2 * (1/2)^5
    assert mcnemar_exact(5, 0) == pytest.approx(0.0625)
    assert mcnemar_exact(4, 4) == 1.0
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 9) == pytest.approx(2 * (1 + 10) / 2**10)
    assert mcnemar_exact(2, 10) == pytest.approx(2 * (1 + 12 + 66) / 2**12)
    assert mcnemar_exact(0, 1) == 1.0  # 2 * 1/2, capped at 1
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_the_binomial_p_values_are_scipy_stats_bit_for_bit() -> None:
    """The engine computes them without importing scipy.stats; the numbers must not move."""
    from scipy.stats import binom, binomtest

    for n in (*range(1, 60), 997, 5000):
        for k in range(0, n + 1, max(1, n // 40)):
            if k <= n - k:
                assert mcnemar_exact(k, n - k) == min(1.0, 2.0 * float(binom.cdf(k, n, 0.5)))
            labels = np.array([0] * max(1, n // 3) + [1] * (n - max(1, n // 3)))
            predictions = np.where(np.arange(n) < k, labels, 1 - labels)  # k correct
            baseline = accuracy_baseline(labels, predictions)
            assert baseline is not None and baseline.correct == k
            rate = baseline.majority_count / n
            expected = binomtest(k, n, rate, alternative="greater").pvalue
            assert baseline.p_value == expected, (k, n)


def test_computing_the_p_values_leaves_scipy_stats_unimported() -> None:
    """scipy.stats costs every job about a CPU-second to import (checked in a fresh process)."""
    code = (
        "import sys, numpy as np\n"
        "from core.metrics.agreement import accuracy_baseline, mcnemar_exact\n"
        "mcnemar_exact(3, 9)\n"
        "accuracy_baseline(np.array([0, 1, 1]), np.array([0, 1, 0]))\n"
        "print('scipy.stats' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert done.stdout.strip() == "False"


# --- per-sample records ----------------------------------------------------------------------


def test_sample_records_by_hand() -> None:
    rec = sample_records(REF, TFL)
    assert isinstance(rec, SampleRecords)
    assert len(rec) == 4
    assert rec.ref_top1.tolist() == [0, 1, 2, 0]
    assert rec.tfl_top1.tolist() == [0, 1, 2, 1]
    assert rec.agree.tolist() == [True, True, True, False]
    np.testing.assert_allclose(rec.ref_top1_prob, [0.7, 0.8, 0.6, 0.5])
    np.testing.assert_allclose(rec.tfl_top1_prob, [0.6, 0.9, 0.6, 0.6])
    np.testing.assert_allclose(rec.ref_margin, [0.5, 0.7, 0.4, 0.1], atol=1e-12)
    np.testing.assert_allclose(rec.max_abs_delta, [0.1, 0.1, 0.1, 0.2], atol=1e-12)
    np.testing.assert_allclose(rec.top1_prob_delta, [-0.1, 0.1, 0.0, -0.2], atol=1e-12)
    kl0 = 0.7 * math.log(0.7 / 0.6) + 0.2 * math.log(0.2 / 0.3) + 0.1 * math.log(0.1 / 0.1)
    kl3 = 0.5 * math.log(0.5 / 0.3) + 0.4 * math.log(0.4 / 0.6) + 0.1 * math.log(0.1 / 0.1)
    assert rec.kl[0] == pytest.approx(kl0, abs=1e-12)
    assert rec.kl[3] == pytest.approx(kl3, abs=1e-12)
    assert rec.kl[0] > 0


def test_kl_zero_log_zero_and_epsilon_clip() -> None:
    ref = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0]])
    tfl = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    rec = sample_records(ref, tfl)
    assert rec.kl[0] == pytest.approx(math.log(2.0))
    assert rec.kl[1] == pytest.approx(0.5 * math.log(0.5) + 0.5 * math.log(0.5 / 1e-12))
    assert np.isfinite(rec.kl).all()
    assert sample_records(REF, REF).kl == pytest.approx([0.0] * 4, abs=1e-15)


def test_nan_output_is_a_disagreement_with_nan_deltas() -> None:
    ref = np.array([[0.9, 0.1], [0.8, 0.2], [NAN, NAN]])
    tfl = np.array([[NAN, NAN], [0.7, 0.3], [NAN, NAN]])
    rec = sample_records(ref, tfl)
    # Naive argmax of an all-NaN row is 0 on both sides: row 2 must not "agree".
    assert rec.agree.tolist() == [False, True, False]
    assert rec.ref_top1.tolist() == [0, 0, -1]
    assert rec.tfl_top1.tolist() == [-1, 0, -1]
    for column in (rec.max_abs_delta, rec.top1_prob_delta, rec.kl):
        assert np.isnan(column[0]) and np.isnan(column[2])
        assert np.isfinite(column[1])
    assert np.isnan(rec.tfl_top1_prob[0])
    assert rec.ref_top1_prob[0] == pytest.approx(0.9)


def test_sample_records_refuses_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="differ in shape"):
        sample_records(REF, TFL[:, :2])
    with pytest.raises(ValueError, match="differ in shape"):
        sample_records(REF, TFL[:3])


def test_records_table_columns_in_file_order() -> None:
    rec = sample_records(REF, TFL)
    table = records_table(rec)
    assert list(table) == [
        "tfl_top1",
        "tfl_top1_prob",
        "agree",
        "max_abs_delta",
        "top1_prob_delta",
        "kl",
    ]
    assert table["tfl_top1"].tolist() == [0, 1, 2, 1]
    assert table["agree"].tolist() == [True, True, True, False]
    assert all(len(col) == 4 for col in table.values())


# --- aggregate agreement ---------------------------------------------------------------------


def test_agreement_by_hand() -> None:
    result = agreement(REF, TFL)
    assert result.n == 4
    assert result.top1_agreement_pct == pytest.approx(75.0)
    assert result.disagreements == 1
    lo, hi = _wilson_textbook(3, 4, 1.959963984540054)
    assert result.top1_agreement_ci95 == pytest.approx((100 * lo, 100 * hi))
    assert result.k == 3  # asked for 5, only 3 classes
    assert result.topk_agreement_pct == pytest.approx(100.0)
    assert result.flip_matrix == ((0, 1, 0), (0, 0, 0), (0, 0, 0))
    assert result.max_abs_prob_delta == pytest.approx(0.2)
    assert result.mean_abs_top1_prob_delta == pytest.approx((0.1 + 0.1 + 0.0 + 0.2) / 4)
    kl0 = 0.7 * math.log(0.7 / 0.6) + 0.2 * math.log(0.2 / 0.3)
    kl1 = 0.1 * math.log(0.1 / 0.05) + 0.8 * math.log(0.8 / 0.9) + 0.1 * math.log(0.1 / 0.05)
    kl2 = 0.2 * math.log(0.2 / 0.1) + 0.2 * math.log(0.2 / 0.3)
    kl3 = 0.5 * math.log(0.5 / 0.3) + 0.4 * math.log(0.4 / 0.6)
    assert result.mean_kl == pytest.approx((kl0 + kl1 + kl2 + kl3) / 4)
    assert result.nan_outputs == 0
    assert result.reference_accuracy_pct is None
    assert result.tflite_accuracy_pct is None
    assert result.accuracy_delta_pct is None
    assert result.mcnemar_p is None
    assert result.labelled_n == 0
    d = result.to_dict()
    assert d["flip_matrix"] == [[0, 1, 0], [0, 0, 0], [0, 0, 0]]
    assert d["top1_agreement_ci95"] == list(result.top1_agreement_ci95)
    assert d["top1_agreement_pct"] == 75.0


def test_topk_agreement_counts_misses() -> None:
    # Reference top-1 is class 0 everywhere; TFLite top-2 is {1, 2} (miss) then {1, 0} (hit).
    ref = np.array([[0.7, 0.1, 0.1, 0.1], [0.7, 0.1, 0.1, 0.1]])
    tfl = np.array([[0.1, 0.5, 0.4, 0.0], [0.3, 0.5, 0.2, 0.0]])
    result = agreement(ref, tfl, k=2)
    assert result.k == 2
    assert result.top1_agreement_pct == 0.0
    assert result.topk_agreement_pct == pytest.approx(50.0)
    assert result.flip_matrix[0] == (0, 2, 0, 0)
    assert agreement(ref, tfl, k=4).topk_agreement_pct == pytest.approx(100.0)


def test_agreement_with_nan_output() -> None:
    ref = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    tfl = np.array([[NAN, NAN], [0.4, 0.6], [0.4, 0.6], [0.3, 0.7]])
    result = agreement(ref, tfl, labels=np.array([0, 1, 0, 1]))
    assert result.top1_agreement_pct == pytest.approx(50.0)
    assert result.disagreements == 2
    assert result.nan_outputs == 1
    assert result.flip_matrix == ((0, 1), (0, 0))  # only the real flip, not the NaN row
    assert result.disagreements == sum(map(sum, result.flip_matrix)) + result.nan_outputs
    assert result.topk_agreement_pct == pytest.approx(75.0)  # k = C = 2; NaN row misses
    assert result.max_abs_prob_delta == pytest.approx(0.2)  # NaN row ignored
    assert result.mean_abs_top1_prob_delta == pytest.approx((0.2 + 0.2 + 0.0) / 3)
    assert math.isfinite(result.mean_kl)
    # Accuracy: the NaN row counts as wrong for TFLite.
    assert result.reference_accuracy_pct == pytest.approx(100.0)
    assert result.tflite_accuracy_pct == pytest.approx(50.0)
    assert result.accuracy_delta_pct == pytest.approx(-50.0)
    assert result.mcnemar_p == pytest.approx(2 * (1 / 2) ** 2)  # b=2, c=0


def test_all_nan_outputs_give_nan_aggregates() -> None:
    ref = np.array([[0.9, 0.1], [0.2, 0.8]])
    tfl = np.full((2, 2), NAN)
    result = agreement(ref, tfl)
    assert result.top1_agreement_pct == 0.0
    assert result.nan_outputs == 2
    assert math.isnan(result.max_abs_prob_delta)
    assert math.isnan(result.mean_kl)
    assert result.flip_matrix == ((0, 0), (0, 0))


def test_accuracy_fields_with_labels() -> None:
    # ref top-1: 0 1 2 0; tfl top-1: 0 1 2 1.
    result = agreement(REF, TFL, labels=np.array([0, 1, 1, 1]))
    assert result.labelled_n == 4
    assert result.reference_accuracy_pct == pytest.approx(50.0)  # right on 0, 1
    assert result.tflite_accuracy_pct == pytest.approx(75.0)  # right on 0, 1, 3
    assert result.accuracy_delta_pct == pytest.approx(25.0)
    assert result.mcnemar_p == pytest.approx(1.0)  # b=0, c=1


def test_accuracy_ignores_unlabelled_samples() -> None:
    result = agreement(REF, TFL, labels=np.array([0, -1, 1, 1]))
    assert result.labelled_n == 3
    assert result.reference_accuracy_pct == pytest.approx(100 / 3)  # right on sample 0 only
    assert result.tflite_accuracy_pct == pytest.approx(200 / 3)  # right on samples 0 and 3
    assert result.accuracy_delta_pct == pytest.approx(100 / 3)
    # Agreement still covers every sample, labelled or not.
    assert result.n == 4
    assert result.top1_agreement_pct == pytest.approx(75.0)


def test_all_unlabelled_gives_no_accuracy() -> None:
    result = agreement(REF, TFL, labels=np.array([-1, -1, -1, -1]))
    assert result.labelled_n == 0
    assert result.reference_accuracy_pct is None
    assert result.mcnemar_p is None


def test_mcnemar_from_discordant_pairs_in_agreement() -> None:
    # 5 samples the reference gets right and TFLite gets wrong, none the other way.
    ref = np.tile([[0.9, 0.1]], (6, 1))
    tfl = np.array([[0.1, 0.9]] * 5 + [[0.9, 0.1]])
    result = agreement(ref, tfl, labels=np.zeros(6, dtype=np.int64))
    assert result.reference_accuracy_pct == pytest.approx(100.0)
    assert result.tflite_accuracy_pct == pytest.approx(100 / 6)
    assert result.mcnemar_p == pytest.approx(0.0625)


def test_agreement_ties_are_deterministic() -> None:
    ref = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    tfl = np.array([[0.5, 0.5, 0.0], [0.0, 0.5, 0.5]])
    result = agreement(ref, tfl)
    assert result.top1_agreement_pct == 100.0
    # A one-ulp win for class 1 flips it, and the matrix says 0 -> 1.
    tfl2 = np.array([[0.5, np.nextafter(0.5, 1.0), 0.0], [0.0, 0.5, 0.5]])
    flipped = agreement(ref, tfl2)
    assert flipped.disagreements == 1
    assert flipped.flip_matrix[0][1] == 1


def test_agreement_refuses_bad_inputs() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        agreement(np.zeros((0, 3)), np.zeros((0, 3)))
    with pytest.raises(ValueError, match="differ in shape"):
        agreement(REF, TFL[:2])
    with pytest.raises(ValueError, match="labels must have shape"):
        agreement(REF, TFL, labels=np.array([0, 1]))
    with pytest.raises(ValueError, match="k must be at least 1"):
        agreement(REF, TFL, k=0)


# --- quantization math -----------------------------------------------------------------------


def test_uint8_outputs_are_dequantized_before_any_delta() -> None:
    q = np.array([[51, 204], [255, 0]], dtype=np.uint8)
    deq = dequantize(q, 1 / 255, 0)
    assert deq.dtype == np.float32
    np.testing.assert_allclose(deq, [[0.2, 0.8], [1.0, 0.0]], atol=1e-7)
    assert outputs_are_probabilities(deq) is True  # a distribution once dequantized
    tfl = to_probabilities(deq, softmax=False)
    ref = np.array([[0.2, 0.8], [1.0, 0.0]])
    rec = sample_records(ref, tfl)
    assert rec.agree.all()
    assert np.max(rec.max_abs_delta) < 1e-6
    # Read raw, the same bytes look like logits: softmax saturates and the deltas are wrong.
    assert outputs_are_probabilities(q) is False
    raw = to_probabilities(q, softmax=True)
    assert sample_records(ref, raw).max_abs_delta[0] == pytest.approx(0.2)


def test_quantized_probabilities_are_kept_when_the_reference_emits_probabilities() -> None:
    # An int8-float32 softmax output (scale 1/256, zero point -128), dequantized: each value is
    # off by up to half a step, so the row sums 0.99609375. Judged on its own it looks like
    # logits; the reference's decision (probabilities) keeps it as it is.
    scale = 1 / 256
    q = np.array([[-128 + 230, -128 + 10, -128 + 15]], dtype=np.int8)
    dequantized = (q.astype(np.float64) + 128) * scale
    assert abs(dequantized.sum() - 1.0) > 1e-3
    assert outputs_are_probabilities(dequantized) is False  # why it must never be re-asked
    np.testing.assert_allclose(to_probabilities(dequantized, softmax=False), dequantized)


def test_delta_stats_by_hand() -> None:
    stats = delta_stats(np.array([-0.4, 0.1, 0.2, np.nan]))
    assert stats["n"] == 4  # NaN rows are counted, left out of the statistics
    assert stats["mean"] == pytest.approx((-0.4 + 0.1 + 0.2) / 3)
    # p99 of three values, linear interpolation: 0.1 + 0.98 * (0.2 - 0.1)
    assert stats["p99"] == pytest.approx(0.198)
    assert stats["max |value|"] == pytest.approx(0.4)
    assert delta_stats(np.array([])) == {"n": 0, "mean": None, "p99": None, "max |value|": None}


# A binary classifier with one sigmoid output: P(class 1) per image.
P1 = np.array([[0.9], [0.2], [0.6], [0.05]])


def test_one_sigmoid_column_is_the_two_class_distribution() -> None:
    assert outputs_are_probabilities(P1)
    probs = to_probabilities(P1, softmax=False)
    np.testing.assert_allclose(probs, [[0.1, 0.9], [0.8, 0.2], [0.4, 0.6], [0.95, 0.05]])
    np.testing.assert_array_equal(top1(probs), [1, 0, 1, 0])


def test_one_logit_column_is_read_through_a_sigmoid() -> None:
    logits = np.array([[2.0], [-1.0], [0.0], [NAN]])
    assert not outputs_are_probabilities(logits)
    probs = to_probabilities(logits, softmax=True)
    p = 1.0 / (1.0 + np.exp(-np.array([2.0, -1.0, 0.0])))
    np.testing.assert_allclose(probs[:3], np.stack([1 - p, p], axis=1))
    assert np.isnan(probs[3]).all()


def test_an_inverting_variant_on_a_binary_head_disagrees_everywhere() -> None:
    # A variant answering 1 - p on every image picks the other class on every image: read as
    # one column, both would be "class 0" and agree 100 % with KL 0.
    ref = to_probabilities(P1, softmax=False)
    inverted = to_probabilities(1.0 - P1, softmax=False)
    result = agreement(ref, inverted, labels=np.array([1, 0, 1, 0]))
    assert result.top1_agreement_pct == 0.0
    assert result.disagreements == 4
    assert result.flip_matrix == ((0, 2), (2, 0))
    assert result.reference_accuracy_pct == 100.0 and result.tflite_accuracy_pct == 0.0
    expected_kl = np.mean(
        [q * math.log(q / (1 - q)) + (1 - q) * math.log((1 - q) / q) for q in P1[:, 0]]
    )
    assert result.mean_kl == pytest.approx(expected_kl)
    assert result.max_abs_prob_delta == pytest.approx(max(abs(2 * q - 1) for q in P1[:, 0]))


def test_several_sigmoids_are_a_multi_label_head_not_logits() -> None:
    multi = output_form(np.array([[0.9, 0.8, 0.1], [0.2, 0.7, 0.6]]))
    assert multi.multi_label and not multi.probabilities
    softmaxed = output_form(np.array([[0.7, 0.2, 0.1]]))
    assert softmaxed.probabilities and not softmaxed.multi_label
    logits = output_form(np.array([[2.5, -1.0, 0.3]]))
    assert not logits.probabilities and not logits.multi_label
    assert not output_form(P1).multi_label  # one column: a binary head
    # Decided over every batch: one batch outside [0, 1] makes the whole output logits.
    assert not multi.combine(logits).multi_label
