"""Time models' single invocations after warm-up, interleaved in blocks (the protocol is
core.metrics.latency)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from core.metrics.latency import (
    BUDGET_S,
    MAX_BUDGETED_RUNS,
    MIN_BUDGETED_RUNS,
    TIMING_BLOCKS,
    interleaved_schedule,
    split_blocks,
)


def time_invocations(invoke: Callable[[], object], *, runs: int, warmup: int) -> np.ndarray:
    """Call `invoke` `warmup` times untimed, then time each of the next `runs` calls.

    Warm-up calls absorb one-off costs (graph tracing, allocation, cache fills) that would
    otherwise land in the first timed sample. Each call is timed on its own with
    `time.perf_counter_ns`, so the result is a distribution, not just a mean.

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


PROBE_RUNS = 3  # calls timed after warm-up to size a budgeted measurement (not kept)


@dataclass(frozen=True)
class TimedModel:
    """One model's per-call samples (ms, call order) and the sizes of its blocks in that order."""

    samples: np.ndarray
    blocks: list[int]

    def split(self) -> list[np.ndarray]:
        return split_blocks(self.samples, self.blocks)


def time_interleaved(
    invokes: Mapping[str, Callable[[], object]],
    *,
    runs: int | None,
    warmup: int,
    budget_s: float = BUDGET_S,
    blocks: int = TIMING_BLOCKS,
) -> dict[str, TimedModel]:
    """Time several models in rotating blocks (A B A B …) so a load change hits them alike.

    Each model is warmed up first. With `runs` given every model gets that many timed calls;
    with None each gets as many as fit in `budget_s` seconds (from PROBE_RUNS probe calls),
    between MIN_BUDGETED_RUNS and MAX_BUDGETED_RUNS. The calls are then made in the order of
    core.metrics.latency.interleaved_schedule.

    Raises:
        ValueError: if runs < 1 or warmup < 0.
    """
    if runs is not None and runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    counts: dict[str, int] = {}
    for name, invoke in invokes.items():
        for _ in range(warmup):
            invoke()
        if runs is not None:
            counts[name] = runs
            continue
        probe = time_invocations(invoke, runs=PROBE_RUNS, warmup=0)
        per_call_s = max(float(np.median(probe)) / 1e3, 1e-9)
        counts[name] = int(np.clip(budget_s / per_call_s, MIN_BUDGETED_RUNS, MAX_BUDGETED_RUNS))
    samples: dict[str, list[np.ndarray]] = {name: [] for name in invokes}
    for name, k in interleaved_schedule(counts, blocks=blocks):
        samples[name].append(time_invocations(invokes[name], runs=k, warmup=0))
    return {
        name: TimedModel(np.concatenate(parts), [int(p.size) for p in parts])
        for name, parts in samples.items()
    }
