"""Latency timing and statistics: call counting, warm-up exclusion and hand-computed percentiles."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from core.engine.timing import PROBE_RUNS, time_interleaved, time_invocations
from core.metrics.latency import latency_stats, tail_latency, unstable_timing
from core.types import LatencyStats


def test_stats_of_one_to_hundred_by_hand() -> None:
    samples = np.arange(1, 101, dtype=np.float64)
    stats = latency_stats(samples)
    assert isinstance(stats, LatencyStats)
    assert stats.n == 100
    assert stats.min == 1.0
    # Linear interpolation at rank q * (n - 1): 49.5 -> 50.5, 89.1 -> 90.1, 98.01 -> 99.01.
    assert stats.p50 == pytest.approx(50.5)
    assert stats.p90 == pytest.approx(90.1)
    assert stats.p99 == pytest.approx(99.01)
    assert stats.mean == pytest.approx(50.5)
    # Population std of 1..n is sqrt((n^2 - 1) / 12).
    assert stats.std == pytest.approx(math.sqrt((100**2 - 1) / 12))
    # And the same as numpy's defaults.
    assert stats.p90 == pytest.approx(float(np.percentile(samples, 90)))
    assert stats.std == pytest.approx(float(np.std(samples)))


def test_stats_do_not_depend_on_order_and_serialise() -> None:
    rng = np.random.default_rng(0)
    samples = rng.permutation(np.arange(1, 101, dtype=np.float64))
    stats = latency_stats(samples)
    assert stats.p50 == pytest.approx(50.5)
    assert stats.to_dict() == {
        "min": 1.0,
        "p50": stats.p50,
        "p90": stats.p90,
        "p99": stats.p99,
        "mean": stats.mean,
        "std": stats.std,
        "n": 100,
        "max": 100.0,
    }


def test_single_sample_has_zero_std() -> None:
    stats = latency_stats(np.array([3.25]))
    assert (stats.min, stats.p50, stats.p90, stats.p99, stats.mean) == (3.25,) * 5
    assert stats.std == 0.0
    assert stats.n == 1


def test_stats_refuse_empty_and_non_finite() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        latency_stats(np.array([]))
    with pytest.raises(ValueError, match="finite"):
        latency_stats(np.array([1.0, math.nan]))


def test_time_invocations_counts_calls_and_returns_positive_ms() -> None:
    calls = []

    def invoke() -> None:
        calls.append(1)
        sum(range(1000))

    result = time_invocations(invoke, runs=7, warmup=3)
    assert len(calls) == 10
    assert result.shape == (7,)
    assert result.dtype == np.float64
    assert (result > 0).all()


def test_time_invocations_measures_milliseconds() -> None:
    result = time_invocations(lambda: time.sleep(0.005), runs=3, warmup=0)
    # sleep() never returns early; the value is in ms, not ns or s.
    assert (result >= 5.0).all()
    assert (result < 1000.0).all()


def test_warmup_calls_are_not_timed() -> None:
    calls = []

    def invoke() -> None:
        calls.append(1)
        if len(calls) <= 2:  # only the warm-up calls are slow
            time.sleep(0.1)

    result = time_invocations(invoke, runs=4, warmup=2)
    assert len(calls) == 6
    assert result.max() < 100.0


def test_time_invocations_refuses_bad_counts() -> None:
    with pytest.raises(ValueError, match="runs must be at least 1"):
        time_invocations(lambda: None, runs=0, warmup=0)
    with pytest.raises(ValueError, match="warmup must be >= 0"):
        time_invocations(lambda: None, runs=1, warmup=-1)


def test_stats_record_the_slowest_run() -> None:
    assert latency_stats([3.0, 1.0, 7.5, 2.0]).max == 7.5


def test_without_a_run_count_timing_fits_the_budget() -> None:
    calls = 0

    def sleep_5ms() -> None:
        nonlocal calls
        calls += 1
        time.sleep(0.005)

    samples = time_interleaved({"m": sleep_5ms}, runs=None, warmup=0, budget_s=0.3)["m"].samples
    # 0.3 s of 5 ms calls is at most 60 calls (fewer when sleep oversleeps on a busy box),
    # after the probe calls that size the measurement.
    assert 10 <= samples.size <= 60 and calls == samples.size + PROBE_RUNS


def test_without_a_run_count_a_fast_model_stops_at_the_run_cap() -> None:
    timed = time_interleaved({"m": lambda: None}, runs=None, warmup=0, budget_s=30.0)
    assert timed["m"].samples.size == 1000


def test_without_a_run_count_a_slow_model_still_gets_ten_runs() -> None:
    timed = time_interleaved({"m": lambda: time.sleep(0.02)}, runs=None, warmup=0, budget_s=0.01)
    assert timed["m"].samples.size == 10


def test_tail_is_p99_from_100_runs_and_max_below() -> None:
    assert tail_latency({"n": 100, "p99": 9.9, "max": 12.0}) == ("p99", 9.9)
    assert tail_latency({"n": 99, "p99": 9.9, "max": 12.0}) == ("max", 12.0)
    assert tail_latency({"n": 50, "p99": 9.9}) == ("max", None)  # written before max existed


def test_bimodal_timing_is_flagged() -> None:
    rng = np.random.default_rng(0)
    # The case: samples split between 0.30 ms and 7.7 ms, in either proportion.
    for fast_share in (0.3, 0.5, 0.7, 0.85):
        fast = int(200 * fast_share)
        samples = np.concatenate([rng.normal(0.30, 0.01, fast), rng.normal(7.7, 0.2, 200 - fast)])
        assert unstable_timing(rng.permutation(samples)) is not None, fast_share


def test_tight_timing_is_not_flagged() -> None:
    rng = np.random.default_rng(1)
    assert unstable_timing(rng.normal(1.0, 0.05, 200)) is None
    # A few slow outliers (under 10 % of runs) are what any machine does: not flagged.
    spiky = np.concatenate([rng.normal(1.0, 0.05, 195), [4.0, 5.0, 6.0, 8.0, 9.0]])
    assert unstable_timing(spiky) is None


def test_wide_spread_is_flagged() -> None:
    # Evenly spread on a log scale from 0.5 to 8 ms: no gap, but p50 = 2 ms and p90 = 6 ms,
    # so the typical call is not typical.
    samples = np.geomspace(0.5, 8.0, 200)
    assert unstable_timing(samples) is not None


def test_a_handful_of_runs_is_not_judged() -> None:
    # Two or five runs (tests, a slow original) cannot show a busy machine: no re-measure.
    assert unstable_timing([0.3, 7.7]) is None
    assert unstable_timing([0.3, 0.3, 7.7, 7.7, 7.7]) is None
