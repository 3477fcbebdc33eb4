"""The time stage: per-invoke latency at batch 1 of the original and every finished variant.

Runs after every conversion is over, under a host-wide lock, so nothing else of ours competes
for the cores. Every model timed in one worker is timed in one session, in interleaved blocks
(core.engine.timing.time_interleaved), together with the two baselines a speed-up is stated
against: float32 TFLite on the same LiteRT runtime (the headline), and the TensorFlow original
(second, labelled as such). A re-score or a restarted worker times its new variants with both
baselines again, so every speed-up comes from timings of one process.

Writes reference.latency.npy and <variant>.latency.npy (per-call samples in call order; the
block sizes are `latency_ms.blocks`), the summaries and each variant's `speedup` in
report.json; a restarted worker skips what is already timed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from core.engine.faults import maybe_inject
from core.engine.stages.context import RunContext
from core.engine.stages.decode import first_images
from core.engine.stages.files import save_npy
from core.engine.timing import TimedModel, time_interleaved
from core.inputs import rundir
from core.metrics.latency import latency_stats, speedup_spread, unstable_timing
from core.types import VariantStatus

ORIGINAL = "reference"  # the TensorFlow original's key in a timing session
BASELINE = "float32"  # the float32 TFLite variant's name: the headline speed-up's baseline


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
        time_session(run)


def untimed_variants(run: RunContext) -> list[str]:
    """The finished variants with no latency yet (all of them on a first pass)."""
    names = []
    for spec in run.specs:
        entry = run.report.variant(spec.name)
        if entry["status"] == VariantStatus.DONE and not entry.get("latency_ms"):
            names.append(spec.name)
    return names


def time_session(run: RunContext) -> None:
    """Time the untimed variants interleaved with the original and the float32 baseline."""
    todo = untimed_variants(run)
    reference = run.report.reference
    reference_path = run.run_dir / rundir.REFERENCE_LATENCY
    reference_timed = bool(reference.get("latency_ms")) and reference_path.exists()
    if not todo and reference_timed:
        return
    for name in todo:
        maybe_inject("latency", name)
    image = first_images(run, 1)[0]
    invokes = {ORIGINAL: original_invoke(run)}
    baseline, missing = baseline_invoke(run, image, todo)
    if baseline is not None:
        invokes[BASELINE] = baseline
    for name in todo:
        if name not in invokes:
            invokes[name] = variant_invoke(run, name, image)
    who = ", ".join(["the original", *(n for n in invokes if n != ORIGINAL)])
    run.emit("latency", 0.0, f"timing {who} at batch 1, in interleaved blocks")
    timed, warnings = stable_session(run, invokes, todo)

    if not reference_timed:
        run.report.set_measured(
            "reference", **latency_fields(timed[ORIGINAL], warnings.get(ORIGINAL))
        )
        save_npy(reference_path, timed[ORIGINAL].samples)
    for name in todo:
        files = rundir.entry_files(run.report.variant(name))
        save_npy(rundir.latency_path(run.run_dir, files), timed[name].samples)
        speedup = speedup_entry(timed, name, missing)
        run.report.set_result(
            name,
            **latency_fields(timed[name], warnings.get(name)),
            speedup=speedup,
            speedup_vs_reference=speedup["vs_original"]["value"],
        )
    run.report.save()


def latency_fields(timed: TimedModel, warning: str | None) -> dict[str, Any]:
    """The summary of one model's samples, with the sizes of its blocks in call order."""
    return {
        "latency_ms": {**latency_stats(timed.samples).to_dict(), "blocks": timed.blocks},
        "latency_warning": warning,
    }


def speedup_entry(
    timed: Mapping[str, TimedModel], name: str, missing: str | None
) -> dict[str, Any]:
    """A variant's `speedup`: against float32 TFLite (the headline) with its block spread, and
    against the TensorFlow original under `vs_original`."""
    model = timed[name].split()
    vs_original = speedup_spread(timed[ORIGINAL].split(), model).to_dict()
    if missing is not None:
        return {"baseline": None, "value": None, "missing": missing, "vs_original": vs_original}
    if name == BASELINE:
        return {"baseline": BASELINE, "value": None, "vs_original": vs_original}
    spread = speedup_spread(timed[BASELINE].split(), model).to_dict()
    return {"baseline": BASELINE, **spread, "vs_original": vs_original}


def stable_session(
    run: RunContext, invokes: Mapping[str, Callable[[], object]], todo: list[str]
) -> tuple[dict[str, TimedModel], dict[str, str]]:
    """Time the session; if a model's own samples say the machine was busy, time it once more.

    Blocks that disagree on a speed-up do not start a second session: that speed-up carries its
    own `unstable` line (core.metrics.latency.speedup_spread), and a second session cost as
    much as the first (9 s on the MobileNetV2 bench) to change no number a user reads.

    Returns the timings and, per model still unstable the second time, a one-line warning for
    its card (the numbers are kept: a flagged number beats no number).
    """
    job = run.job

    def measure() -> tuple[dict[str, TimedModel], dict[str, str]]:
        timed = time_interleaved(
            invokes, runs=job.latency_runs, warmup=job.warmup_runs, budget_s=job.latency_budget_s
        )
        return timed, unstable_models(timed)

    timed, reasons = measure()
    if not reasons:
        return timed, {}
    run.emit("latency", 0.5, "timing was unstable; measuring again")
    timed, reasons = measure()
    warnings = {
        name: f"unstable timing ({reason}), measured twice; another load was likely running"
        for name, reason in reasons.items()
    }
    return timed, warnings


def unstable_models(timed: Mapping[str, TimedModel]) -> dict[str, str]:
    """Why each model's own samples cannot be quoted as one number (the models that can are
    left out): the only reason a timing session is run a second time."""
    return {name: reason for name, t in timed.items() if (reason := unstable_timing(t.samples))}


def original_invoke(run: RunContext) -> Callable[[], object]:
    """The original's serving function on the first image (DESIGN §6: not model.predict)."""
    from core.engine.runtime import OriginalRunner

    return OriginalRunner(run.model).timed_call(first_images(run, 1)[0])


def variant_invoke(run: RunContext, name: str, image: np.ndarray) -> Callable[[], None]:
    """One written .tflite's invoke at batch 1 on `image`."""
    from core.engine.runtime import TFLiteRunner

    files = rundir.entry_files(run.report.variant(name))
    tflite = rundir.tflite_path(run.run_dir, files).read_bytes()
    runner = TFLiteRunner(tflite, threads=run.threads, name=f"{name}.tflite")
    return runner.timed_invoke(image)


def baseline_invoke(
    run: RunContext, image: np.ndarray, todo: list[str]
) -> tuple[Callable[[], None] | None, str | None]:
    """float32 TFLite's invoke, and None or why there is no baseline.

    The run's float32 variant when it finished; otherwise the float32 conversion the diagnosis
    starts from (cached), converted here only to be timed.
    """
    from core.engine.runtime import TFLiteRunner
    from core.engine.stages.diagnose import float_tflite
    from core.errors import QuantLensError

    if not todo:
        return None, None  # only the original is timed: there is no speed-up to state
    entry = next((v for v in run.report.read_only["variants"] if v["name"] == BASELINE), None)
    if entry is not None and entry.get("status") == VariantStatus.DONE:
        return variant_invoke(run, BASELINE, image), None
    try:
        tflite = float_tflite(run)
        runner = TFLiteRunner(tflite, threads=run.threads, name="float32.tflite")
        return runner.timed_invoke(image), None
    except (QuantLensError, RuntimeError, ValueError) as exc:
        return None, f"float32 TFLite could not be made to time against ({exc})"
