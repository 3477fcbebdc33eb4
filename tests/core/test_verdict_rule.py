"""`--verdict point|lower-bound` in core.reporting.report: the rule, the n a lower bound needs (checked
against a brute-force Wilson bound written here), the CLI lines that say why, and exit codes."""

from __future__ import annotations

import math
from typing import Any

import pytest

from core.reporting.report import (
    exit_status,
    finished_variant,
    format_table,
    pending_variant,
    samples_needed,
    too_few_samples_note,
)
from core.types import Agreement, VariantSpec

Z = 1.959963984540054  # the 97.5 % normal quantile


def wilson_lower_pct(k: int, n: int) -> float:
    """The Wilson score lower bound in %, straight from the textbook formula."""
    p = k / n
    centre = p + Z * Z / (2 * n)
    spread = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n))
    return 100.0 * (centre - spread) / (1 + Z * Z / n)


def brute_force_needed(threshold_pct: float) -> int:
    n = 1
    while wilson_lower_pct(n, n) < threshold_pct - 1e-9:
        n += 1
    return n


@pytest.mark.parametrize("threshold", [50.0, 80.0, 90.0, 95.0, 97.5, 99.0, 99.5])
def test_samples_needed_matches_a_brute_force_wilson_search(threshold: float) -> None:
    assert samples_needed(threshold) == brute_force_needed(threshold)


def test_samples_needed_at_95_is_73() -> None:
    # 72 / (72 + z²) = 0.9493 < 0.95 <= 73 / (73 + z²) = 0.9500: worked out by hand.
    assert wilson_lower_pct(72, 72) < 95.0 <= wilson_lower_pct(73, 73)
    assert samples_needed(95.0) == 73


def test_no_n_reaches_a_100_percent_lower_bound() -> None:
    assert samples_needed(100.0) is None
    assert "whatever the number of images" in str(too_few_samples_note(10_000, 100.0))


def test_the_note_names_n_and_the_needed_n_only_when_n_is_too_small() -> None:
    assert too_few_samples_note(20, 95.0) == (
        "20 images are too few for the lower 95 % bound to reach 95 % even at 100 % "
        "agreement; at least 73 are needed"
    )
    assert too_few_samples_note(73, 95.0) is None


def _agreement(*, k: int, n: int, lower: float, upper: float) -> Agreement:
    return Agreement(
        n=n,
        top1_agreement_pct=100.0 * k / n,
        top1_agreement_ci95=(lower, upper),
        k=5,
        topk_agreement_pct=100.0,
        disagreements=n - k,
        max_abs_prob_delta=0.01,
        mean_abs_top1_prob_delta=0.001,
        mean_kl=0.0001,
        nan_outputs=0,
        flip_matrix=((0, 0), (0, 0)),
        reference_accuracy_pct=None,
        tflite_accuracy_pct=None,
        accuracy_delta_pct=None,
        mcnemar_p=None,
        labelled_n=0,
    )


def _judged(rule: str, *, k: int, n: int, lower: float, upper: float = 100.0) -> dict[str, Any]:
    return finished_variant(
        pending_variant(VariantSpec.parse("int8")),
        size_bytes=250_000,
        reference_size=1_000_000,
        agreement=_agreement(k=k, n=n, lower=lower, upper=upper),
        reference={},  # unlabelled: agreement alone decides
        min_agreement_pct=95.0,
        conversion_seconds=1.0,
        conversion_cached=False,
        conversion_route="traced_function",
        select_tf_ops_used=(),
        softmax_applied=False,
        warnings=[],
        io={},
        verdict_rule=rule,
    )


def _report(variant: dict[str, Any], rule: str) -> dict[str, Any]:
    return {
        "reference": {"size_bytes": 1_000_000, "accuracy_pct": None, "latency_ms": None},
        "options": {"min_agreement_pct": 95.0, "verdict": rule},
        "variants": [variant],
        "dataset": {"num_samples": variant["n"], "num_skipped": 0},
        "environment": {"threads": 2},
        "warnings": [],
    }


def test_the_issue_case_19_of_20_passes_by_point_and_fails_by_lower_bound() -> None:
    # 19 of 20 is 95 %, with a Wilson interval of about 76.4-99.1 % (the issue's numbers).
    lower, upper = wilson_lower_pct(19, 20), 99.1
    point = _judged("point", k=19, n=20, lower=lower, upper=upper)
    bound = _judged("lower-bound", k=19, n=20, lower=lower, upper=upper)
    assert point["passed"] is True
    assert bound["passed"] is False
    assert exit_status(_report(point, "point")) == 0
    assert exit_status(_report(bound, "lower-bound")) == 1
    assert point["n_needed"] == bound["n_needed"] == 73


def test_a_large_sample_passes_by_lower_bound_and_needs_no_more_images() -> None:
    entry = _judged("lower-bound", k=1000, n=1000, lower=wilson_lower_pct(1000, 1000))
    assert entry["passed"] is True
    assert entry["n_needed"] is None


def test_the_cli_table_says_which_rule_and_why_a_variant_fails() -> None:
    entry = _judged("lower-bound", k=20, n=20, lower=wilson_lower_pct(20, 20))
    text = format_table(_report(entry, "lower-bound"))
    assert "verdict: PASS when the lower 95 % Wilson bound of top-1 agreement is at least 95 %" in (
        text
    )
    assert "int8: FAIL — lower 95 % bound 83.9 % is below 95 % (agreement 100.00 %, n=20)" in text
    assert "note: 20 images are too few" in text
    assert "at least 73 are needed" in text


def test_the_point_rule_is_named_and_still_warns_about_a_small_n() -> None:
    entry = _judged("point", k=20, n=20, lower=wilson_lower_pct(20, 20))
    text = format_table(_report(entry, "point"))
    assert "verdict: PASS when top-1 agreement (the point estimate) is at least 95 %" in text
    assert "note: 20 images are too few" in text
    assert "FAIL" not in text.split("verdict:")[1]
