"""The time stage: per-invoke latency at batch 1 of the original and every finished variant.

Runs after every conversion is over, under a host-wide lock, so nothing else of ours competes
for the cores. Writes reference.latency.npy and <variant>.latency.npy, and the summaries in
report.json; a restarted worker skips what is already timed.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from core.engine.faults import maybe_inject
from core.engine.stages.context import RunContext
from core.engine.stages.decode import first_images
from core.engine.stages.files import save_npy
from core.engine.timing import time_invocations
from core.inputs import rundir
from core.metrics.latency import latency_stats, unstable_timing
from core.types import LatencyStats, VariantSpec


def time_models(run: RunContext) -> None:
    """Time the original and each finished variant, waiting for any other job's timing first.

    The host-wide lock keeps two QuantLens jobs (other workspaces, a CLI run elsewhere) from
    timing at the same moment on the same cores; the workspace queue only orders runs of
    one workspace.
    """
    from core import posix

    def say_waiting() -> None:
        run.emit("latency", 0.0, "waiting for another QuantLens job to finish timing")

    with posix.host_lock(posix.TIMING_LOCK, on_wait=say_waiting):
        reference = reference_latency(run)
        image = first_images(run, 1)[0]
        for spec in run.specs:
            entry = run.report.variant(spec.name)
            if entry["status"] != "done" or entry.get("latency_ms"):
                continue
            stats = variant_latency(run, spec, image)
            entry["speedup_vs_reference"] = reference.p50 / stats.p50 if stats.p50 > 0 else None
            run.report.save()


def variant_latency(run: RunContext, spec: VariantSpec, image: np.ndarray) -> LatencyStats:
    """Time one written .tflite at batch 1; its samples file and summary are recorded."""
    from core.engine.runtime import TFLiteRunner

    name = spec.name
    run.emit("latency", 0.0, f"timing {name} at batch 1", name)
    maybe_inject("latency", name)
    tflite = rundir.tflite_path(run.run_dir, spec).read_bytes()
    runner = TFLiteRunner(tflite, threads=run.threads, name=f"{name}.tflite")
    samples, warning = stable_samples(run, runner.timed_invoke(image), name)
    save_npy(rundir.latency_path(run.run_dir, spec), samples)
    stats = latency_stats(samples)
    entry = run.report.variant(name)
    entry["latency_ms"] = stats.to_dict()
    entry["latency_warning"] = warning
    return stats


def reference_latency(run: RunContext) -> LatencyStats:
    """The original's batch-1 latency through its serving function (timed once per run)."""
    import tensorflow as tf

    reference = run.report.data["reference"]
    path = run.run_dir / rundir.REFERENCE_LATENCY
    if reference.get("latency_ms") and path.exists():
        return latency_stats(np.load(path))
    run.emit("latency", 0.0, "timing the original model at batch 1")
    x = tf.constant(first_images(run, 1))
    serve = run.model.concrete_function
    samples, warning = stable_samples(run, lambda: serve(x), None)
    save_npy(path, samples)
    stats = latency_stats(samples)
    reference["latency_ms"] = stats.to_dict()
    reference["latency_warning"] = warning
    run.report.save()
    return stats


def stable_samples(
    run: RunContext, invoke: Callable[[], object], who: str | None
) -> tuple[np.ndarray, str | None]:
    """Time `invoke`; if the spread says the machine was busy, time it once more.

    Returns the samples and, when the second measurement is still unstable, a one-line
    warning for the card (the numbers are kept: a flagged number beats no number).
    """
    job = run.job
    runs, warmup, budget = job.latency_runs, job.warmup_runs, job.latency_budget_s
    samples = time_invocations(invoke, runs=runs, warmup=warmup, budget_s=budget)
    if unstable_timing(samples) is None:
        return samples, None
    run.emit("latency", 0.5, "timing was unstable; measuring again", who)
    samples = time_invocations(invoke, runs=runs, warmup=warmup, budget_s=budget)
    reason = unstable_timing(samples)
    if reason is None:
        return samples, None
    return (
        samples,
        f"unstable timing ({reason}), measured twice; another load was likely running",
    )
