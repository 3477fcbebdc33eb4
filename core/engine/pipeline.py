"""Run one job inside the worker: the stages of core.engine.stages, in order.

    start → decode → reference → evaluate → diagnose → runtimes → time → deploy → perturb →
    sweep → finish
                     convert ────┘  (a second thread, started with the reference pass)

With --engine ray, one Ray stage (stages.ray_evaluate) replaces decode, reference, convert and
evaluate: the head converts, the cluster decodes and evaluates, the local stages' functions
record the outputs.

Images are decoded once, streamed through the original into an on-disk uint8 cache; each
converted model then reads that cache batch by batch, so memory does not grow with the number
of images beyond the per-sample records. Every stage keeps report.json current (atomically),
so a crash in a later variant loses nothing, and a restarted worker resumes from the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.engine.stages.auto_fix import auto_fix
from core.engine.stages.context import ProgressFn, RunContext, effective_threads
from core.engine.stages.convert import (
    ConversionInputs,
    conversions_started,
    convert_in_background,
)
from core.engine.stages.deploy import check_deployability
from core.engine.stages.diagnose import diagnose_variants
from core.engine.stages.evaluate import run_evaluation
from core.engine.stages.files import DecodedCache
from core.engine.stages.finish import finish
from core.engine.stages.latency import time_models
from core.engine.stages.perturb import run_flip_hunt
from core.engine.stages.ray_evaluate import evaluate_on_ray
from core.engine.stages.reference import ReferenceOutputs, run_reference
from core.engine.stages.runtimes import run_runtime_matrix
from core.engine.stages.start import open_run, resolve_inputs
from core.engine.stages.sweep import run_sweep
from core.options import reproduce_command
from core.types import JobSpec

# What the worker and the tests reach through the pipeline.
__all__ = [
    "DecodedCache",
    "RunContext",
    "convert_in_background",
    "effective_threads",
    "reproduce_command",
    "resolve_inputs",
    "run_job",
]


def run_job(
    job: JobSpec,
    run_dir: Path,
    *,
    progress: ProgressFn,
    cache_dir: Path | None,
) -> dict[str, Any]:
    """Run every stage of one job in its run folder; returns the final report.json.

    Cancelling is the supervisor's: it stops the worker process; the files stay consistent.
    """
    run = open_run(job, run_dir, progress=progress, cache_dir=cache_dir)
    # With --engine ray, one cluster pass runs the original and every variant and records them.
    reference = evaluate_on_ray(run) if job.engine == "ray" else reference_and_evaluation(run)
    diagnose_variants(run, reference)
    # Variants --auto-fix derives join the run here, so the time stage times them too.
    run = auto_fix(run, reference)
    # Every finished variant, derived ones included, under the runtimes --runtimes asks for.
    run_runtime_matrix(run, reference)
    # Timing waits until no conversion competes for the cores.
    time_models(run)
    # Deployability reads each .tflite (two small child processes per variant): after timing,
    # so it never competes with a timed model.
    check_deployability(run)
    # --perturb: every variant again under small perturbations, after the run's own results.
    run_flip_hunt(run, reference)
    # The calibration sweep comes after the run's own results are complete: cancelling it
    # loses only sweep points.
    run_sweep(run, reference)
    finish(run)
    return run.report.data


def reference_and_evaluation(run: RunContext) -> ReferenceOutputs:
    """The local engine: the reference stage pulls the decode stage batch by batch while the
    conversion thread converts what needs no calibration (the float32 pivot first, which every
    quantizer recipe starts from); then this thread evaluates each conversion in turn."""
    inputs = ConversionInputs()
    with conversions_started(run, run.pending(), inputs) as conversions:
        reference = run_reference(run, on_decoded=lambda count: inputs.images_decoded(run, count))
        inputs.reference_done(run, reference)
        run_evaluation(run, reference, conversions)
    return reference
