"""Time a model's single invocations after warm-up and summarise them as percentiles."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from core.types import LatencyStats


def time_invocations(invoke: Callable[[], object], *, runs: int, warmup: int) -> np.ndarray:
    """Call `invoke` `warmup` times untimed, then `runs` times, timing each call.

    Warm-up calls absorb one-off costs (graph tracing, allocation, cache fills) that would
    otherwise land in the first timed sample. Each call is timed on its own with
    `time.perf_counter_ns`, so the result is a distribution, not just a mean.

    Args:
        invoke: a zero-argument callable that runs the model once on a fixed input.
        runs: number of timed calls (>= 1).
        warmup: number of untimed calls before them (>= 0).

    Returns:
        float64 milliseconds, one per timed call, in call order.

    Raises:
        ValueError: if runs < 1 or warmup < 0.
    """
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        invoke()
    elapsed_ns = np.empty(runs, dtype=np.int64)
    for i in range(runs):
        start = time.perf_counter_ns()
        invoke()
        elapsed_ns[i] = time.perf_counter_ns() - start
    return elapsed_ns.astype(np.float64) / 1e6


def latency_stats(samples_ms: npt.ArrayLike) -> LatencyStats:
    """Summary of per-invoke latencies in milliseconds.

    Percentiles use numpy's default linear interpolation. `std` is the population standard
    deviation (ddof=0): it describes the measured runs themselves, not an estimate for
    unseen ones, and stays defined (0.0) for a single run.

    Raises:
        ValueError: if there are no samples, or any sample is NaN/Inf.
    """
    arr = np.asarray(samples_ms, dtype=np.float64).ravel()
    if arr.size == 0:
        raise ValueError("latency_stats needs at least one sample; got none")
    if not np.isfinite(arr).all():
        raise ValueError("latency samples must be finite; got NaN or Inf")
    p50, p90, p99 = np.percentile(arr, [50.0, 90.0, 99.0])
    return LatencyStats(
        min=float(arr.min()),
        p50=float(p50),
        p90=float(p90),
        p99=float(p99),
        mean=float(arr.mean()),
        std=float(arr.std(ddof=0)),
        n=int(arr.size),
    )
