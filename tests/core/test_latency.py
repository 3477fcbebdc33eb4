"""Latency timing and statistics: call counting, warm-up exclusion and hand-computed percentiles."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from core.latency import latency_stats, time_invocations
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
