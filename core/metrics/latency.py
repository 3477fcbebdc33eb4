"""The latency protocol (budget, thread count, p99 rule) and the percentiles of timed calls.

The timing loop itself is core.engine.timing; this module is pure numpy so the dashboard can
read it."""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
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


CGROUP_ROOT = Path("/sys/fs/cgroup")


def host_cpus() -> int:
    """Every CPU of the host, whether or not this process may use it (os.cpu_count)."""
    return os.cpu_count() or 1


def usable_cpus(*, cgroup_root: Path = CGROUP_ROOT, affinity: Collection[int] | None = None) -> int:
    """The CPUs this process may actually run on: its affinity mask, capped by a cgroup quota.

    os.cpu_count() is the host's count: a container given 2 CPUs of a 64-core host would
    otherwise start 63 threads that fight over 2 CPUs. A fractional quota rounds up (1.5 CPUs
    can keep two threads busy half the time each).

    Args:
        cgroup_root: where the cgroup file system is mounted (a test passes a folder).
        affinity: the CPU ids to count; None reads os.sched_getaffinity(0) where it exists.
    """
    if affinity is None and hasattr(os, "sched_getaffinity"):
        affinity = os.sched_getaffinity(0)
    count = len(affinity) if affinity else host_cpus()
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota in CPUs from cgroup v2 `cpu.max` or v1 `cfs_quota_us`, None when unlimited
    or unreadable."""
    v2 = root / "cpu.max"
    pairs: list[tuple[str, str]] = []
    try:
        fields = v2.read_text().split()
        if len(fields) == 2:
            pairs.append((fields[0], fields[1]))
    except OSError:
        pass
    for folder in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        try:
            quota = (root / folder / "cpu.cfs_quota_us").read_text().strip()
            period = (root / folder / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            continue
        pairs.append((quota, period))
        break
    for quota, period in pairs:
        try:
            q, p = float(quota), float(period)
        except ValueError:  # "max": no quota
            continue
        if q > 0 and p > 0:
            return q / p
    return None


def default_threads() -> int:
    """Every usable CPU but one (one on a one-CPU machine), so timing is not at the mercy of
    whoever is watching: the spare CPU serves the dashboard's polling and the desktop."""
    return max(1, usable_cpus() - 1)


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


# -- interleaved timing blocks and the speed-up with its spread --------------------------------

# Models are timed in rounds, one block of runs per model per round (A B C A B C …), so a load
# change during the measurement hits every model alike, and each round gives one paired
# ratio. TIMING_BLOCKS rounds at most (fewer when a model has fewer runs than that).
TIMING_BLOCKS = 5
# A speed-up whose per-block ratios span more than this factor (highest / lowest) is flagged:
# the blocks disagree, so the load changed while the models were timed.
SPEEDUP_BLOCK_SPREAD = 1.5


def block_sizes(runs: int, blocks: int) -> list[int]:
    """`runs` split into `blocks` near-equal blocks, the larger ones first (sum is `runs`)."""
    if runs < 1 or blocks < 1:
        raise ValueError(f"runs and blocks must be at least 1; got {runs} and {blocks}")
    blocks = min(blocks, runs)
    base, extra = divmod(runs, blocks)
    return [base + 1 if i < extra else base for i in range(blocks)]


def interleaved_schedule(
    runs: Mapping[str, int], *, blocks: int = TIMING_BLOCKS
) -> list[tuple[str, int]]:
    """The order to time models in: rounds of one block per model, in `runs`' order.

    Every model gets the same number of blocks (TIMING_BLOCKS, or the fewest runs any model
    has), so block i of every model falls in the same round and their ratio is a paired one.

    Returns:
        (model, number of runs) in call order; each model's counts sum to its `runs`.
    """
    if not runs:
        return []
    rounds = min(blocks, *runs.values())
    sizes = {name: block_sizes(n, rounds) for name, n in runs.items()}
    return [(name, sizes[name][r]) for r in range(rounds) for name in runs]


def split_blocks(samples_ms: npt.ArrayLike, sizes: Sequence[int]) -> list[np.ndarray]:
    """Per-run samples in call order cut back into their blocks."""
    arr = np.asarray(samples_ms, dtype=np.float64).ravel()
    if sum(sizes) != arr.size:
        raise ValueError(f"block sizes sum to {sum(sizes)} but there are {arr.size} samples")
    return np.split(arr, np.cumsum(sizes)[:-1]) if sizes else []


@dataclass(frozen=True)
class SpeedupSpread:
    """How many times faster a model is than a baseline, block by block.

    `value` is the median over blocks of (baseline's median / model's median in that block);
    `low`/`high` the smallest and largest block ratio, `q1`/`q3` their quartiles. `unstable`
    says why the blocks disagree (None when they agree).
    """

    value: float
    low: float
    high: float
    q1: float
    q3: float
    blocks: int
    block_ratios: list[float]
    baseline_block_p50_ms: list[float]
    block_p50_ms: list[float]
    unstable: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def speedup_spread(
    baseline_blocks: Sequence[npt.ArrayLike], model_blocks: Sequence[npt.ArrayLike]
) -> SpeedupSpread:
    """The speed-up of a model over a baseline from their paired timing blocks.

    Raises:
        ValueError: no blocks, a different number of blocks on each side, or an empty block.
    """
    if not baseline_blocks or len(baseline_blocks) != len(model_blocks):
        raise ValueError(
            f"need the same number of blocks on both sides; got {len(baseline_blocks)} "
            f"and {len(model_blocks)}"
        )
    base = [float(np.median(np.asarray(b, dtype=np.float64))) for b in baseline_blocks]
    mine = [float(np.median(np.asarray(b, dtype=np.float64))) for b in model_blocks]
    if any(not math.isfinite(m) or m <= 0 for m in mine + base):
        raise ValueError("every block needs samples with a positive median")
    ratios = np.asarray(base) / np.asarray(mine)
    low, high = float(ratios.min()), float(ratios.max())
    q1, q3 = (float(q) for q in np.percentile(ratios, [25.0, 75.0]))
    disagree = high / low
    return SpeedupSpread(
        value=float(np.median(ratios)),
        low=low,
        high=high,
        q1=q1,
        q3=q3,
        blocks=int(ratios.size),
        block_ratios=[float(r) for r in ratios],
        baseline_block_p50_ms=base,
        block_p50_ms=mine,
        unstable=(
            f"unstable: blocks disagree by {disagree:.1f}×"
            if disagree > SPEEDUP_BLOCK_SPREAD
            else None
        ),
    )
