"""core.reporting.report: the verdict (and the one near-chance rule, a binomial test against the
labels' majority class), size changes, the CLI table and the exit status, on hand-made entries
whose expected values are worked out here."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from core.metrics.agreement import accuracy_baseline
from core.reporting.report import (
    exit_status,
    finished_variant,
    format_table,
    near_chance,
    no_verdict_reason,
    pending_variant,
    reduction_pct,
    run_status,
    size_change_label,
    verdict,
)
from core.reporting.report_changes import fill_float32_reductions
from core.types import Agreement, RunStatus, VariantSpec


def _agreement(*, agree_pct: float, ref_acc: float | None) -> Agreement:
    return Agreement(
        n=100,
        top1_agreement_pct=agree_pct,
        top1_agreement_ci95=(agree_pct - 3.0, min(100.0, agree_pct + 1.0)),
        k=5,
        topk_agreement_pct=100.0,
        disagreements=round(100 - agree_pct),
        max_abs_prob_delta=0.01,
        mean_abs_top1_prob_delta=0.001,
        mean_kl=0.0001,
        nan_outputs=0,
        flip_matrix=((0, 0), (0, 0)),
        reference_accuracy_pct=ref_acc,
        tflite_accuracy_pct=ref_acc,
        accuracy_delta_pct=None if ref_acc is None else 0.0,
        mcnemar_p=None if ref_acc is None else 1.0,
        labelled_n=0 if ref_acc is None else 100,
    )


def _binomial_tail(correct: int, n: int, rate: float) -> float:
    """P(X >= correct), X ~ Binomial(n, rate): summed here, independently of scipy."""
    return sum(math.comb(n, k) * rate**k * (1 - rate) ** (n - k) for k in range(correct, n + 1))


def _reference(
    ref_acc: float | None, *, n: int = 100, majority_pct: float = 10.0
) -> dict[str, Any]:
    """report.json's `reference` as the engine writes it: the original right on ref_acc % of
    n images whose most common class (3) holds majority_pct % of them."""
    if ref_acc is None:
        return {"accuracy_pct": None, "accuracy_baseline": None}
    correct, count = round(n * ref_acc / 100), round(n * majority_pct / 100)
    labels = np.array([3] * count + [4 + i % 5 for i in range(n - count)])
    predictions = np.where(np.arange(n) < correct, labels, -1)
    baseline = accuracy_baseline(labels, predictions)
    assert baseline is not None
    return {"accuracy_pct": ref_acc, "accuracy_baseline": baseline.to_dict()}


def _finished(
    *, agree_pct: float, ref_acc: float | None, name: str = "int8", **shape: Any
) -> dict[str, Any]:
    return finished_variant(
        pending_variant(VariantSpec.parse(name)),
        size_bytes=250_000,
        reference_size=1_000_000,
        agreement=_agreement(agree_pct=agree_pct, ref_acc=ref_acc),
        reference=_reference(ref_acc, **shape),
        min_agreement_pct=95.0,
        conversion_seconds=1.0,
        conversion_cached=False,
        conversion_route="traced_function",
        select_tf_ops_used=(),
        softmax_applied=False,
        warnings=[],
        io={},
    )


def test_the_majority_baseline_is_a_one_sided_binomial_test() -> None:
    labels = np.array([7] * 208 + [1] * 100 + [2] * 92 + [-1] * 5)  # 5 unlabelled
    predictions = np.where(np.arange(len(labels)) < 250, labels, 0)
    baseline = accuracy_baseline(labels, predictions)
    assert baseline is not None
    assert (baseline.majority_class, baseline.majority_count, baseline.n) == (7, 208, 400)
    assert baseline.correct == 250
    assert baseline.text() == "majority class 7 at 52.0 % of n=400"
    assert baseline.p_value == pytest.approx(_binomial_tail(250, 400, 0.52), rel=1e-6)
    assert accuracy_baseline(np.array([-1, -1]), np.array([0, 1])) is None


@pytest.mark.parametrize(
    ("accuracy", "n", "majority_pct", "expected"),
    [
        (74.0, 100, 50.0, False),  # a 74 %-accurate binary model on balanced labels: judged
        (74.0, 400, 50.0, False),
        (52.0, 400, 52.0, True),  # at the majority rate of an imbalanced set: no verdict
        (55.0, 400, 52.0, True),  # above it, but not clearly (p ~ 0.12)
        (8.0, 100, 10.0, True),  # a wrong preset on 10 classes
        (97.0, 100, 10.0, False),
        (100.0, 100, 100.0, True),  # one class only: nothing can beat "always that class"
        (None, 100, 10.0, False),  # no labels: no rule
    ],
)
def test_near_chance_is_not_clearly_above_the_majority_class(
    accuracy: float | None, n: int, majority_pct: float, expected: bool
) -> None:
    reference = _reference(accuracy, n=n, majority_pct=majority_pct)
    assert near_chance(reference) is expected
    if accuracy is not None:
        p = _binomial_tail(round(n * accuracy / 100), n, majority_pct / 100)
        assert (p >= 1e-3) is expected


def test_a_74_percent_binary_model_on_balanced_labels_gets_a_verdict() -> None:
    # The rule this replaces (below 1.5 x 1/C) called this model broken: 74 < 75.
    entry = _finished(agree_pct=99.0, ref_acc=74.0, n=400, majority_pct=50.0)
    assert entry["verdict_reason"] is None
    assert verdict(entry) == "PASS"


def test_an_original_at_the_majority_rate_gets_no_verdict_naming_the_baseline() -> None:
    # 52 % of an imbalanced 3-class set: 1.5 x 1/3 = 50 % would have judged it.
    entry = _finished(agree_pct=100.0, ref_acc=52.0, n=400, majority_pct=52.0)
    p = _binomial_tail(208, 400, 0.52)
    assert entry["verdict_reason"] == (
        "the original is 52.0 % accurate, not clearly above always answering the majority "
        f"class 3 at 52.0 % of n=400 (one-sided binomial p = {p:.2g}): check the "
        "preprocessing preset or the labels"
    )
    assert entry["passed"] is False
    assert verdict(entry) == "NO VERDICT"


def test_no_verdict_reason_is_none_without_labels_or_when_clearly_above() -> None:
    assert no_verdict_reason(_reference(90.0)) is None
    assert no_verdict_reason(_reference(None)) is None
    assert no_verdict_reason({}) is None  # a report from before the baseline was stored


def test_a_near_chance_original_means_no_pass_even_at_full_agreement() -> None:
    entry = _finished(agree_pct=100.0, ref_acc=8.0)
    assert entry["passed"] is False
    assert entry["verdict_reason"] == no_verdict_reason(_reference(8.0))
    assert verdict(entry) == "NO VERDICT"
    assert exit_status({"variants": [entry]}) == 1


@pytest.mark.parametrize(
    ("agree_pct", "ref_acc", "passed", "shown"),
    [
        (96.0, 90.0, True, "PASS"),
        (95.0, 90.0, True, "PASS"),  # the threshold itself passes
        (94.99, 90.0, False, "FAIL"),
        (99.0, None, True, "PASS"),  # unlabelled data: agreement alone decides
    ],
)
def test_verdict_against_the_threshold(
    agree_pct: float, ref_acc: float | None, passed: bool, shown: str
) -> None:
    entry = _finished(agree_pct=agree_pct, ref_acc=ref_acc)
    assert entry["passed"] is passed
    assert entry["verdict_reason"] is None
    assert verdict(entry) == shown
    assert entry["size_reduction_pct"] == pytest.approx(75.0)  # 250 kB of 1 MB


def test_unfinished_variants_show_their_status() -> None:
    pending = pending_variant(VariantSpec.parse("float16"))
    assert pending["passed"] is None and pending["verdict_reason"] is None
    assert verdict(pending) == "PENDING"
    assert verdict({**pending, "status": "crashed"}) == "CRASHED"


def test_exit_status_is_0_only_when_every_variant_passes() -> None:
    good = _finished(agree_pct=99.0, ref_acc=90.0)
    bad = _finished(agree_pct=80.0, ref_acc=90.0)
    assert exit_status({"variants": [good, good]}) == 0
    assert exit_status({"variants": [good, bad]}) == 1
    assert exit_status({"variants": [good, {**good, "status": "crashed", "passed": None}]}) == 1
    assert exit_status({"variants": []}) == 1  # nothing was judged: not a pass


@pytest.mark.parametrize(
    ("size", "baseline", "expected"),
    [(250, 1000, 75.0), (1050, 1000, -5.0), (1000, 1000, 0.0), (10, 0, None), (10, None, None)],
)
def test_reduction_pct(size: int, baseline: int | None, expected: float | None) -> None:
    got = reduction_pct(size, baseline)
    assert got == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("reduction", "label"),
    [(86.14, "−86.1 %"), (-5.0, "+5.0 %"), (0.01, "±0.0 %"), (-0.04, "±0.0 %")],
)
def test_size_change_label_carries_the_true_sign(reduction: float, label: str) -> None:
    assert size_change_label(reduction) == label


def test_float32_reductions_use_the_float32_variant_as_baseline() -> None:
    report = {
        "variants": [
            {"name": "float32", "mode": "float32", "size_bytes": 400},
            {"name": "int8", "mode": "int8", "size_bytes": 100},
            {"name": "float16", "mode": "float16", "size_bytes": None},
        ]
    }
    fill_float32_reductions(report)
    assert report["variants"][0]["size_reduction_vs_float32_pct"] == pytest.approx(0.0)
    assert report["variants"][1]["size_reduction_vs_float32_pct"] == pytest.approx(75.0)
    assert "size_reduction_vs_float32_pct" not in report["variants"][2]


def _report(variants: list[dict[str, Any]], *, accuracy: float) -> dict[str, Any]:
    return {
        "reference": {"size_bytes": 1_000_000, "accuracy_pct": accuracy, "latency_ms": None},
        "options": {"min_agreement_pct": 95.0},
        "dataset": {"num_samples": 100, "num_skipped": 2},
        "environment": {"threads": 2},
        "variants": variants,
    }


def test_cli_table_names_the_no_verdict_reason_on_its_own_line() -> None:
    variants = [
        _finished(agree_pct=100.0, ref_acc=8.0, name="float16"),
        _finished(agree_pct=99.0, ref_acc=8.0, name="int8"),
    ]
    lines = format_table(_report(variants, accuracy=8.0)).splitlines()
    header, _, original, float16, int8 = lines[:5]
    assert header.split()[-1] == "verdict"
    assert original.split()[:3] == ["original", "1.00", "MB"] and "8.0%" in original
    assert float16.endswith("NO VERDICT") and int8.endswith("NO VERDICT")
    assert "100.00% [97.0, 100.0] n=100" in float16
    assert "0.25 MB  75.0%" in int8
    assert lines[6] == "100 images compared, 2 skipped; threshold 95% top-1 agreement; 2 threads"
    reason = "NO VERDICT — " + str(no_verdict_reason(_reference(8.0)))
    assert lines[7] == ("verdict: PASS when top-1 agreement (the point estimate) is at least 95 %")
    assert lines[8:] == [f"float16: {reason}", f"int8: {reason}"]


def test_cli_table_prefers_the_error_of_a_failed_variant() -> None:
    failed = {
        **pending_variant(VariantSpec.parse("int16x8")),
        "status": "crashed",
        "error": "crashed (SIGABRT) during conversion",
    }
    lines = format_table(_report([failed], accuracy=90.0)).splitlines()
    assert lines[3].endswith("CRASHED")
    assert lines[-1] == "int16x8: crashed (SIGABRT) during conversion"


def test_run_status_is_done_once_every_variant_ended() -> None:
    done = {"mode": "int8", "status": "done"}
    crashed = {"mode": "float16", "status": "crashed"}
    running = {"mode": "float16", "status": "running"}
    assert run_status({"variants": [done, crashed]}) is RunStatus.DONE
    assert run_status({"variants": [done, running]}) is RunStatus.RUNNING


def test_cli_table_warns_about_unstable_latency() -> None:
    v = _finished(agree_pct=99.0, ref_acc=90.0, name="dynamic")
    v["latency_warning"] = "unstable timing (two clusters), measured twice"
    report = _report([v], accuracy=90.0)
    report["reference"]["latency_warning"] = "unstable timing (wide spread), measured twice"
    lines = format_table(report).splitlines()
    assert lines[-2:] == [
        "warning: original latency: unstable timing (wide spread), measured twice",
        "warning: dynamic latency: unstable timing (two clusters), measured twice",
    ]
