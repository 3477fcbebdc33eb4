"""The latency protocol (budget, thread count, p99 rule) and the percentiles of timed calls.

The timing loop itself is core.engine.timing; this module is pure numpy so the dashboard can
read it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from core.types import LatencyStats

# Without --latency-runs a model is timed for up to BUDGET_S seconds, between MIN_BUDGETED_RUNS
# and MAX_BUDGETED_RUNS calls: a model under 10 ms gets well over the P99_MIN_RUNS a p99 needs,
# and a slow original does not hold the machine for minutes.
BUDGET_S = 2.0
MIN_BUDGETED_RUNS = 10
MAX_BUDGETED_RUNS = 1000
P99_MIN_RUNS = 100  # below this the 99th percentile is the largest sample or next to it

# Unstable timing (DESIGN: latency is only quotable on a quiet machine). p90/p50 above
# SPREAD_RATIO means the typical call is not typical; a gap of GAP_RATIO between neighbouring
# sorted samples with at least GAP_MIN_SHARE of the runs on each side is a bimodal split (the
# machine was busy for part of the measurement, e.g. 0.3 ms vs 7.7 ms).
SPREAD_RATIO = 2.0
GAP_RATIO = 2.0
GAP_MIN_SHARE = 0.1
STABILITY_MIN_RUNS = 20  # fewer runs cannot tell a busy machine from one slow call


def default_threads() -> int:
    """Every core but one (one on a one-core machine), so timing is not at the mercy of whoever
    is watching: the spare core serves the dashboard's polling and the desktop."""
    return max(1, (os.cpu_count() or 1) - 1)


def tail_latency(stats: Mapping[str, Any]) -> tuple[str, float | None]:
    """The tail figure to quote for a latency summary: ("p99", v) from 100 runs, else ("max", v).

    With fewer than P99_MIN_RUNS runs a "p99" is the slowest sample in disguise; calling it max
    says what it is. A summary from before `max` was recorded gives ("max", None).
    """
    n = int(stats.get("n") or 0)
    if n >= P99_MIN_RUNS and stats.get("p99") is not None:
        return "p99", float(stats["p99"])
    value = stats.get("max")
    return "max", None if value is None else float(value)


def quotable_p99(stats: Mapping[str, Any]) -> float | None:
    """p99 when the summary has at least P99_MIN_RUNS runs behind it, else None (quote max)."""
    label, value = tail_latency(stats)
    return value if label == "p99" else None


def unstable_timing(samples_ms: npt.ArrayLike) -> str | None:
    """Why these per-invoke times cannot be quoted as one number, or None when they can.

    Flags a wide spread (p90/p50 above SPREAD_RATIO) and a bimodal split (a GAP_RATIO jump
    between neighbouring sorted samples with at least GAP_MIN_SHARE of runs on each side).
    Rare slow outliers (under GAP_MIN_SHARE, above p90) are normal and not flagged.
    """
    arr = np.sort(np.asarray(samples_ms, dtype=np.float64).ravel())
    if arr.size < STABILITY_MIN_RUNS or arr[0] <= 0:
        return None
    p50, p90 = np.percentile(arr, [50.0, 90.0])
    if p90 / p50 > SPREAD_RATIO:
        return f"wide spread: p90 is {p90 / p50:.1f}× p50"
    edge = max(1, int(np.ceil(GAP_MIN_SHARE * arr.size)))
    inner = arr[edge - 1 : arr.size - edge + 1]  # neighbours with >= edge samples either side
    if inner.size >= 2:
        ratios = inner[1:] / inner[:-1]
        i = int(np.argmax(ratios))
        if ratios[i] > GAP_RATIO:
            return f"two clusters: around {inner[i]:.3g} ms and from {inner[i + 1]:.3g} ms"
    return None


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
        max=float(arr.max()),
        mean=float(arr.mean()),
        std=float(arr.std(ddof=0)),
        n=int(arr.size),
    )
