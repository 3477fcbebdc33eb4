"""The worker process: all model work (load, convert, calibrate, infer, time) runs here, never in the server.

    python -m core.jobs.worker run RUN_DIR        run the job in RUN_DIR/job.json
    python -m core.jobs.worker inspect MODEL      print the model's signature as JSON
    python -m core.jobs.worker preset-check MODEL --images LIST.json
                                                  the original under every preset, as JSON
    python -m core.jobs.worker demo DEMO_DIR      build the embedded demo
        [--then-mobilenetv2]                      ...then start the MobileNetV2 demo's build
    python -m core.jobs.worker demo-outlier DEMO_DIR  build the outlier-channel demo (after demo)
        [--then-mobilenetv2]                      ...then start the MobileNetV2 demo's build
    python -m core.jobs.worker demo-mobilenetv2 DEMO_DIR [--epochs N]
                                                  build the MobileNetV2-0.35 demo (after demo)

The supervisor (core.jobs.supervisor) starts it in its own process group with a wall-clock
timeout and, through QUANTLENS_MEMORY_LIMIT_BYTES, an address-space limit it applies to itself
first. It only drives: the model work is core.engine's, and what it tells its supervisor (exit
codes, status.json, progress, the conversion marker) is core.runfolder.protocol's.
Exit codes: 0 done, 2 a QuantLensError (written to status.json), 3 out of memory, 4 a bug.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

from core import posix
from core.engine.frameworks import configure_threads, quiet_tensorflow, skip_framework_extras
from core.errors import QuantLensError
from core.inputs import convcache, rundir
from core.runfolder import protocol
from core.runfolder.progress import ThrottledProgress
from core.runfolder.protocol import (
    EXIT_BAD_INPUT,
    EXIT_BUG,
    EXIT_OK,
    EXIT_OOM,
    MEMORY_LIMIT_ENV,
    SUPERVISOR_PID_ENV,
)
from core.types import JobSpec, RunStatus


def apply_memory_limit() -> None:
    """Cap this process's address space so a runaway model fails here, not on the machine."""
    limit = os.environ.get(MEMORY_LIMIT_ENV)
    if limit:
        posix.limit_address_space(int(limit))


def die_with_supervisor() -> None:
    """A supervised worker ends when its supervisor does, even one killed by SIGKILL: a worker
    left running would have no time limit, and the queue would start the next run beside it."""
    # Popped: a process this worker starts has another parent and must not inherit the watch.
    supervisor = os.environ.pop(SUPERVISOR_PID_ENV, None)
    if supervisor:
        posix.die_with_parent(int(supervisor))


def progress_writer(run_dir: Path) -> ThrottledProgress:
    """The progress callback: events appended to progress.jsonl, per-batch ones throttled
    (flush it when the job ends)."""
    return ThrottledProgress(run_dir)


def run_job(run_dir: Path) -> int:
    from core.engine import pipeline

    job = JobSpec.from_dict(rundir.read_json(run_dir / rundir.JOB))
    configure_threads(pipeline.effective_threads(job))
    cache_dir = convcache.cache_dir()
    progress = progress_writer(run_dir)
    try:
        pipeline.run_job(job, run_dir, progress=progress, cache_dir=cache_dir)
    except QuantLensError as exc:
        protocol.write_status(run_dir, RunStatus.FAILED, error=str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        progress.flush()
    if job.mlflow_uri:
        track_run(run_dir, job.mlflow_uri)
    return EXIT_OK


def track_run(run_dir: Path, uri: str) -> None:
    """Log the finished run to MLflow; a failure is a warning in report.json, never the run's."""
    from core.reporting.tracking import log_finished_run

    try:
        entry = log_finished_run(run_dir, uri)
    except Exception as exc:  # the run is complete: a tracking bug must not turn it into a crash
        print(f"warning: MLflow logging to {uri} failed: {exc}", file=sys.stderr)
        return
    if entry.error:
        print(f"warning: MLflow logging to {uri} failed: {entry.error}", file=sys.stderr)


def inspect(
    model: str,
    *,
    trusted: bool,
    input_size: tuple[int, int] | None,
    signature_key: str | None = None,
) -> int:
    from core.engine.models import load_reference

    try:
        signature = load_reference(
            Path(model), trusted=trusted, input_size=input_size, signature_key=signature_key
        )
    except QuantLensError as exc:
        print(json.dumps({"error": str(exc), "kind": type(exc).__name__}))
        return EXIT_BAD_INPUT
    print(json.dumps({"signature": signature.signature.to_dict()}))
    return EXIT_OK


def preset_check(
    model: str, images: Path, *, trusted: bool, input_size: tuple[int, int] | None
) -> int:
    """Print the original's outputs under every preset on the images listed in `images`."""
    from core.engine.models import load_reference
    from core.engine.preset_trial import preset_trial
    from core.types import Sample

    listed = json.loads(images.read_text(encoding="utf-8"))
    try:
        reference = load_reference(Path(model), trusted=trusted, input_size=input_size)
        classes = reference.signature.num_classes
        samples = [
            Sample(
                index=i,
                path=str(s["path"]),
                relpath=str(s["relpath"]),
                # A label the model cannot predict is left out, as the run leaves it out.
                label=s["label"] if isinstance(s["label"], int) and s["label"] < classes else None,
            )
            for i, s in enumerate(listed)
        ]
        trial = preset_trial(reference, samples)
    except QuantLensError as exc:
        print(json.dumps({"error": str(exc), "kind": type(exc).__name__}))
        return EXIT_BAD_INPUT
    print(json.dumps({"preset_trial": trial}))
    return EXIT_OK


def remember_demo_signature(model: Path) -> None:
    """Warm the signature cache, so the dashboard shows the fresh demo without a second TF start."""
    from core.engine.models import load_reference

    target = protocol.signature_cache_file(str(model))
    if target is not None:
        rundir.write_json_atomic(target, load_reference(model).signature.to_dict())


def print_progress(fraction: float, message: str) -> None:
    """One "<fraction> <message>" line: the demo build's log, read by core.jobs.demo_jobs."""
    print(f"{fraction:.2f} {message}", flush=True)


def _timing_turn() -> contextlib.AbstractContextManager[None]:
    """The host's timing lock for one training epoch, after a pause that lets a waiting run's
    latency timing in first (so it waits one epoch at most)."""
    import time

    @contextlib.contextmanager
    def turn() -> Iterator[None]:
        time.sleep(0.5)

        def say_waiting() -> None:
            print_progress(0.0, "waiting for a run's latency timing to finish")

        with posix.host_lock(posix.TIMING_LOCK, on_wait=say_waiting):
            yield

    return turn()


def build_outlier_demo(demo_dir: Path, *, then_mobilenet: bool) -> int:
    """Train the outlier-channel demo (seconds) at the lowest CPU priority, taking turns with
    latency timing like the MobileNetV2 build; then start that build when asked."""
    from core.engine.outlier_demo import build_outlier_demo as build
    from core.inputs.demo_paths import outlier_demo_paths

    os.nice(19)
    print_progress(0.0, "loading TensorFlow")
    build(demo_dir, progress=print_progress, epoch_lock=_timing_turn)
    if then_mobilenet:
        from core.jobs.demo_jobs import MOBILENET, start_demo_build

        start_demo_build(home=demo_dir.parent, which=MOBILENET)
    remember_demo_signature(outlier_demo_paths(root=demo_dir).run_model)
    return EXIT_OK


def build_mobilenet_demo(demo_dir: Path, *, epochs: int | None) -> int:
    """Train the MobileNetV2 demo at the lowest CPU priority, taking turns with latency timing.

    It trains for a minute or two on the cores a run's latency timing uses. Each epoch holds
    the host's timing lock, so no latency is measured while it trains, and a run that reaches
    its timing waits one epoch at most (the build waits a moment between epochs to let it in).
    """
    from core.engine import demo_models

    os.nice(19)
    paths = demo_models.build_mobilenet_demo(
        demo_dir,
        progress=print_progress,
        epochs=demo_models.MOBILENET_EPOCHS if epochs is None else epochs,
        min_accuracy=demo_models.MOBILENET_MIN_ACCURACY if epochs is None else 0.0,
        epoch_lock=_timing_turn,
    )
    remember_demo_signature(paths.saved_model)
    return EXIT_OK


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m core.jobs.worker")
    parser.add_argument(
        "command",
        choices=["run", "inspect", "preset-check", "demo", "demo-outlier", "demo-mobilenetv2"],
    )
    parser.add_argument("target")
    parser.add_argument("--trusted", action="store_true")
    parser.add_argument("--input-size", default=None, help="HxW for models with None spatial dims")
    parser.add_argument("--signature", default=None, help="SavedModel signature key")
    parser.add_argument("--then-mobilenetv2", action="store_true", help="chain the large demo")
    parser.add_argument("--epochs", type=int, default=None, help="MobileNetV2 demo epochs")
    parser.add_argument("--images", default=None, help="preset-check: JSON list of images")
    args = parser.parse_args(argv)
    die_with_supervisor()
    # A native crash (SIGSEGV/SIGABRT in the converter or interpreter) then leaves the Python
    # stack in stderr, whose tail the supervisor saves with the crashed variant.
    faulthandler.enable()
    quiet_tensorflow()
    skip_framework_extras()
    apply_memory_limit()
    target = Path(args.target)
    try:
        if args.command == "run":
            return run_job(target)
        if args.command == "inspect":
            size = tuple(int(v) for v in args.input_size.split("x")) if args.input_size else None
            return inspect(
                str(target),
                trusted=args.trusted,
                input_size=size,  # type: ignore[arg-type]
                signature_key=args.signature,
            )
        if args.command == "preset-check":
            size = tuple(int(v) for v in args.input_size.split("x")) if args.input_size else None
            return preset_check(
                str(target),
                Path(args.images),
                trusted=args.trusted,
                input_size=size,  # type: ignore[arg-type]
            )
        if args.command == "demo-mobilenetv2":
            return build_mobilenet_demo(target, epochs=args.epochs)
        if args.command == "demo-outlier":
            return build_outlier_demo(target, then_mobilenet=args.then_mobilenetv2)
        # The first step a first launch shows: loading TensorFlow takes a while on its own.
        print_progress(0.0, "loading TensorFlow")
        from core.engine.demo_models import build_demo

        paths = build_demo(target, progress=print_progress)
        if args.then_mobilenetv2:
            from core.jobs.demo_jobs import OUTLIER, start_demo_build

            start_demo_build(home=target.parent, which=OUTLIER)
        remember_demo_signature(paths.saved_model)
        return EXIT_OK
    except MemoryError:
        print("MemoryError: out of memory", file=sys.stderr)
        return EXIT_OOM
    except Exception:
        traceback.print_exc()
        return EXIT_BUG


if __name__ == "__main__":
    code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # A conversion still running on its thread (after an error on the main thread) must not
    # hold the exit until it finishes; everything worth keeping is already on disk.
    os._exit(code)
