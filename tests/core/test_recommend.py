"""core.reporting.recommend: the Pareto frontier on crafted points and the recommended pick on crafted
reports; every expected frontier and pick is worked out by hand in the comments."""

from __future__ import annotations

from typing import Any

from core.reporting.recommend import (
    TradeoffPoint,
    dominates,
    pareto_frontier,
    recommendation,
    tradeoff_points,
)


def _pt(name: str, size: float, p50: float, agree: float) -> TradeoffPoint:
    return TradeoffPoint(name, size, p50, agree, None, None, "PASS")


def test_dominance_needs_no_worse_everywhere_and_better_somewhere() -> None:
    a = _pt("a", 1.0, 1.0, 99.0)
    assert dominates(a, _pt("b", 2.0, 1.0, 99.0))  # larger, same otherwise
    assert not dominates(a, _pt("c", 0.5, 5.0, 90.0))  # c is smaller: a trade-off
    assert not dominates(a, _pt("same", 1.0, 1.0, 99.0))  # a tie is not dominance


def test_frontier_on_crafted_points() -> None:
    points = [
        _pt("float32", 4.0, 2.0, 100.0),  # the only one at 100 %: kept
        _pt("float16", 2.0, 2.0, 99.5),  # smaller than float32 at a cost in agreement: kept
        _pt("dynamic", 1.0, 3.0, 99.0),  # smaller again, slower: kept
        _pt("int8", 1.0, 1.0, 98.0),  # same size as dynamic, faster, agrees less: kept
        _pt("int8_q", 1.1, 1.2, 97.0),  # int8 is smaller, faster and agrees more: dominated
        _pt("int16x8", 2.5, 2.5, 99.5),  # float16 is smaller, faster, agrees as much: dominated
    ]
    # Sorted by size, then latency: int8 (1.0, 1.0) before dynamic (1.0, 3.0).
    assert pareto_frontier(points) == ["int8", "dynamic", "float16", "float32"]


def test_identical_points_both_stay_on_the_frontier() -> None:
    assert pareto_frontier([_pt("a", 1.0, 1.0, 99.0), _pt("b", 1.0, 1.0, 99.0)]) == ["a", "b"]


def _variant(
    name: str,
    *,
    size: int,
    p50: float | None,
    lower: float,
    agree: float = 99.0,
    status: str = "done",
    verdict_reason: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "mode": "float16",  # any mode: the pick reads the stored name, never the mode
        "status": status,
        "size_bytes": size,
        "latency_ms": None if p50 is None else {"p50": p50},
        "top1_agreement_pct": agree,
        "top1_agreement_ci95": [lower, 100.0],
        "n": 500,
        "passed": None if status != "done" else agree >= 95.0 and verdict_reason is None,
        "verdict_reason": verdict_reason,
        **extra,
    }


def _report(*variants: dict[str, Any], verdict: str = "point") -> dict[str, Any]:
    return {"options": {"min_agreement_pct": 95.0, "verdict": verdict}, "variants": list(variants)}


def _lower_bound(variant: dict[str, Any]) -> dict[str, Any]:
    """The same variant judged by the lower-bound verdict."""
    return {**variant, "passed": variant["top1_agreement_ci95"][0] >= 95.0}


def test_pick_is_the_smallest_passing_not_slower_than_float32_then_the_fastest() -> None:
    report = _report(
        *map(
            _lower_bound,
            [
                _variant("float32", size=4_000_000, p50=2.0, lower=99.0),
                _variant("float16", size=2_000_000, p50=2.0, lower=98.0),
                # As small as int8 but 1.5x slower than float32: ranked after every faster one.
                _variant("dynamic", size=1_000_000, p50=3.0, lower=96.0),
                _variant("int8", size=1_000_000, p50=1.0, lower=95.5),  # the pick
                _variant("int4w_q", size=600_000, p50=1.0, lower=94.9, agree=97.0),  # fails
            ],
        ),
        verdict="lower-bound",
    )
    rec = recommendation(report)
    assert rec["variant"] == "int8"
    assert rec["runner_up"] == "float16"
    assert rec["rule"].startswith(
        "for CPU (LiteRT with XNNPACK): among variants it can run whose the lower 95 % Wilson "
        "bound of top-1 agreement is at least 95 % (the run's verdict), the smallest that is "
        "not slower than float32 TFLite on the same runtime, then the fastest (p50)"
    )
    # 2.0 ms / 1.0 ms, from the p50s (these variants carry no paired speed-up entry).
    assert rec["reason"].startswith(
        "int8: top-1 agreement 99.0 %, lower 95 % bound 95.5 %, n=500, at 1.00 MB; "
        "2.0× faster than float32 TFLite (p50 1 vs 2 ms)"
    )
    assert rec["slower_than_float32"] is None


def test_unjudged_variants_are_never_picked() -> None:
    report = _report(
        _variant("tiny_failed", size=100, p50=0.1, lower=99.0, status="failed"),
        _variant("near_chance", size=200, p50=0.1, lower=99.0, verdict_reason="near chance"),
        _variant("pivot", size=300, p50=0.1, lower=99.0, role="pivot"),
        _variant("float16", size=2_000_000, p50=2.0, lower=98.0),
    )
    rec = recommendation(report)
    assert rec["variant"] == "float16"
    assert rec["runner_up"] is None


def test_when_nothing_qualifies_the_closest_is_the_highest_lower_bound() -> None:
    report = _report(
        *map(
            _lower_bound,
            [
                _variant("int8", size=1_000_000, p50=1.0, lower=83.9, agree=100.0),
                _variant("float16", size=2_000_000, p50=2.0, lower=84.5, agree=100.0),
                _variant("dynamic", size=1_000_000, p50=3.0, lower=84.5, agree=100.0),  # smaller
            ],
        ),
        verdict="lower-bound",
    )
    rec = recommendation(report)
    assert rec["variant"] is None
    assert rec["closest"] == "dynamic"
    assert rec["reason"] == (
        "no variant passes the run's verdict at 95 %; closest: dynamic at 84.5 % (n=500), its "
        "lower 95 % bound"
    )


def test_a_variant_never_timed_sorts_after_a_timed_one_of_the_same_size() -> None:
    report = _report(
        _variant("untimed", size=1_000_000, p50=None, lower=99.0),
        _variant("timed", size=1_000_000, p50=5.0, lower=99.0),
    )
    assert recommendation(report)["variant"] == "timed"


def test_points_leave_out_variants_without_a_size_or_a_p50() -> None:
    variants = [
        _variant("int8", size=1_500_000, p50=1.25, lower=96.0),
        _variant("untimed", size=1_000_000, p50=None, lower=99.0),
        _variant("failed", size=0, p50=None, lower=0.0, status="failed"),
    ]
    points = tradeoff_points(variants, label="run A · {name}")
    assert [(p.name, p.size_mb, p.p50_ms, p.agreement_pct) for p in points] == [
        ("run A · int8", 1.5, 1.25, 99.0)
    ]
    assert points[0].verdict == "PASS"
