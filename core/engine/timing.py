"""Time a model's single invocations after warm-up (the protocol is core.metrics.latency)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from core.metrics.latency import BUDGET_S, MAX_BUDGETED_RUNS, MIN_BUDGETED_RUNS


def time_invocations(
    invoke: Callable[[], object],
    *,
    runs: int | None,
    warmup: int,
    budget_s: float = BUDGET_S,
) -> np.ndarray:
    """Call `invoke` `warmup` times untimed, then time each of the following calls.

    Warm-up calls absorb one-off costs (graph tracing, allocation, cache fills) that would
    otherwise land in the first timed sample. Each call is timed on its own with
    `time.perf_counter_ns`, so the result is a distribution, not just a mean.

    Args:
        invoke: a zero-argument callable that runs the model once on a fixed input.
        runs: number of timed calls (>= 1); None times for `budget_s` seconds, at least
            MIN_BUDGETED_RUNS and at most MAX_BUDGETED_RUNS calls.
        warmup: number of untimed calls before them (>= 0).
        budget_s: the time budget when `runs` is None.

    Returns:
        float64 milliseconds, one per timed call, in call order.

    Raises:
        ValueError: if runs < 1 or warmup < 0.
    """
    if runs is not None and runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        invoke()
    most = MAX_BUDGETED_RUNS if runs is None else runs
    deadline = time.perf_counter_ns() + int(budget_s * 1e9) if runs is None else None
    elapsed_ns = np.empty(most, dtype=np.int64)
    done = 0
    while done < most:
        start = time.perf_counter_ns()
        invoke()
        end = time.perf_counter_ns()
        elapsed_ns[done] = end - start
        done += 1
        if deadline is not None and end >= deadline and done >= MIN_BUDGETED_RUNS:
            break
    return elapsed_ns[:done].astype(np.float64) / 1e6
