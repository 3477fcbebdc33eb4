"""The runtime matrix stage (`--runtimes`): every finished variant's `.tflite` under other
runtimes, against the original and against its own XNNPACK answers.

The same file can answer differently under other kernels (QUANTIZATION_NOTES, "Runtimes"):
XNNPACK against the built-in kernels flips a few top-1 answers of an int8 MobileNet, and
TFLite-Micro equals the reference kernels, not XNNPACK. So per variant and runtime this stage
measures agreement with the original (Wilson interval), accuracy, the disagreement split
against the float32 pivot under the same runtime, and the runtime-only flips: the images whose
top-1 differs from the same file's top-1 under XNNPACK at the run's threads, which is the run's
own evaluation (read back from `<variant>.samples.csv`, not run again).

The built-in and reference kernels and TFLite-Micro run at 1 thread on a seeded subset of
`JobSpec.runtime_images` images (all when None); XNNPACK at 1 thread runs every image. A
runtime that cannot run a variant gets that reason in its cell; the rest is filled. Nothing
runs when `--runtimes` is not given.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.engine.stages.context import RunContext
from core.engine.stages.files import BATCH, DecodedCache
from core.engine.stages.reference import ReferenceOutputs
from core.errors import QuantLensError
from core.inputs import rundir
from core.reporting.sections.runtime_matrix import RuntimeCell, RuntimeMatrix
from core.runfolder.protocol import DECODED_CACHE
from core.types import Mode, Runtime, VariantStatus

if TYPE_CHECKING:
    from core.engine.runtime import Runner

RUNTIME_THREADS = 1  # built-in kernels at 2 threads ran 13-50x slower than at 1 on 2 cores


def subset_positions(total: int, images: int | None, seed: int) -> np.ndarray:
    """The rows the slow runtimes run on: `images` of `total` drawn with `seed`, in row order;
    every row when `images` is None or not smaller than `total`."""
    if images is None or images >= total:
        return np.arange(total)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=images, replace=False))


@dataclass(frozen=True)
class _Evaluated:
    """A finished variant as its evaluation left it: XNNPACK at the run's threads."""

    name: str
    mode: Mode
    tflite: bytes
    top1: np.ndarray  # [N] int, -1 where its output was NaN/Inf
    agree: np.ndarray  # [N] bool
    causes: list[str] | None  # the `cause` column (quantized variants split by the pivot)
    delegate: str | None


def run_runtime_matrix(run: RunContext, reference: ReferenceOutputs) -> None:
    """Fill the `runtimes` section for the runtimes the job asks for (nothing when none).

    A restarted worker or a re-score keeps the cells already measured on the same subset and
    measures only the missing ones.
    """
    runtimes = tuple(run.job.runtimes)
    if not runtimes:
        return
    total = len(reference)
    subset = subset_positions(total, run.job.runtime_images, run.job.seed)
    kept = _kept_cells(run, total, len(subset))
    variants = [_evaluated(run, spec.name) for spec in _finished(run)]
    pivot = run.report.pivot
    # The pivot first, so its agreement under each runtime is there to split the others by.
    variants.sort(key=lambda v: v.name != pivot)
    pivot_agree: dict[Runtime, np.ndarray] = {}
    cells: list[RuntimeCell] = []
    todo = len(variants) * len(runtimes)
    for i, variant in enumerate(variants):
        for j, runtime in enumerate(runtimes):
            # No variant named: every one here has finished, and a crash now must not turn a
            # finished variant's result into "crashed".
            run.emit(
                "runtimes",
                (i * len(runtimes) + j) / max(todo, 1),
                f"{variant.name} under {runtime.label}",
            )
            positions = subset if runtime.on_subset else np.arange(total)
            old = kept.get((variant.name, runtime.value))
            cell, agree = (
                (old, None)
                if old is not None
                else _measure(run, reference, variant, runtime, positions, pivot_agree)
            )
            if variant.name == pivot and agree is not None:
                pivot_agree[runtime] = agree
            cells.append(cell)
    matrix = RuntimeMatrix(
        runtimes=tuple(r.value for r in runtimes),
        total=total,
        subset=len(subset),
        seed=run.job.seed,
        subset_indices=tuple(int(reference.sample_indices[p]) for p in subset),
        cells=tuple(cells),
    )
    run.report.put(matrix)
    run.report.save()
    run.emit("runtimes", 1.0, f"runtime matrix: {len(variants)} variants x {len(runtimes)}")


def _finished(run: RunContext) -> list[Any]:
    return [s for s in run.specs if run.report.variant(s.name).get("status") == VariantStatus.DONE]


def _kept_cells(run: RunContext, total: int, subset: int) -> dict[tuple[str, str], RuntimeCell]:
    """The measured cells of an earlier pass over the same images, by (variant, runtime)."""
    matrix = run.report.section(RuntimeMatrix)
    if matrix is None:
        return {}
    if (matrix.total, matrix.subset, matrix.seed) != (total, subset, run.job.seed):
        return {}
    return {(c.variant, c.runtime): c for c in matrix.cells if c.measured}


def _evaluated(run: RunContext, name: str) -> _Evaluated:
    entry = run.report.variant(name)
    files = rundir.entry_files(entry)
    with rundir.variant_samples_path(run.run_dir, files).open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    has_cause = bool(rows) and "cause" in rows[0]
    return _Evaluated(
        name=name,
        mode=Mode(entry.get("mode") or Mode.FLOAT32),
        tflite=rundir.tflite_path(run.run_dir, files).read_bytes(),
        top1=np.array([int(r["tfl_top1"]) for r in rows], dtype=np.int64),
        agree=np.array([r["agree"] == "1" for r in rows], dtype=bool),
        causes=[r["cause"] for r in rows] if has_cause else None,
        delegate=(entry.get("io") or {}).get("delegate"),
    )


def _measure(
    run: RunContext,
    reference: ReferenceOutputs,
    variant: _Evaluated,
    runtime: Runtime,
    positions: np.ndarray,
    pivot_agree: dict[Runtime, np.ndarray],
) -> tuple[RuntimeCell, np.ndarray | None]:
    """One cell and its per-image agreement (None when the runtime could not run it)."""
    if runtime is Runtime.XNNPACK:
        return _from_evaluation(run, reference, variant), variant.agree
    try:
        runner = _runner(run, variant, runtime)
        outputs = np.concatenate(list(runner.outputs(_pixel_batches(run, reference, positions))))
    except QuantLensError as exc:
        return RuntimeCell(variant=variant.name, runtime=runtime.value, reason=str(exc)), None
    from core.metrics.agreement import sample_records, to_probabilities

    probs = to_probabilities(outputs, softmax=reference.softmax)
    records = sample_records(_reference_rows(reference, positions), probs)
    base = pivot_agree.get(runtime)
    split = None
    if variant.mode is not Mode.FLOAT32 and base is not None:
        split = _split(records.agree, base)
    flips = np.asarray(reference.sample_indices)[positions][
        records.tfl_top1 != variant.top1[positions]
    ]
    cell = _cell(
        variant.name,
        runtime,
        agree=records.agree,
        top1=records.tfl_top1,
        labels=reference.labels[positions],
        split=split,
        flips=flips,
        threads=RUNTIME_THREADS,
        delegate=_delegate(runner),
    )
    return cell, records.agree


def _from_evaluation(
    run: RunContext, reference: ReferenceOutputs, variant: _Evaluated
) -> RuntimeCell:
    """XNNPACK at the run's threads: the variant's own evaluation, as written."""
    from core.metrics.agreement import split_counts

    split = None if variant.causes is None else split_counts(np.asarray(variant.causes))
    return _cell(
        variant.name,
        Runtime.XNNPACK,
        agree=variant.agree,
        top1=variant.top1,
        labels=reference.labels,
        split=split,
        flips=np.zeros(0, dtype=np.int64),
        threads=1 if run.job.engine == "ray" else run.threads,
        delegate=variant.delegate,
    )


def _cell(
    variant: str,
    runtime: Runtime,
    *,
    agree: np.ndarray,
    top1: np.ndarray,
    labels: np.ndarray,
    split: dict[str, int] | None,
    flips: np.ndarray,
    threads: int,
    delegate: str | None,
) -> RuntimeCell:
    from core.metrics.agreement import wilson_interval

    n, hits = len(agree), int(np.sum(agree))
    low, high = wilson_interval(hits, n)
    labelled = labels >= 0
    return RuntimeCell(
        variant=variant,
        runtime=runtime.value,
        n=n,
        agree=hits,
        agreement_pct=100.0 * hits / n if n else None,
        ci_low_pct=100.0 * low,
        ci_high_pct=100.0 * high,
        accuracy_pct=(
            float(100.0 * np.mean(top1[labelled] == labels[labelled])) if labelled.any() else None
        ),
        labelled=int(labelled.sum()),
        disagreement_split=split,
        runtime_flips=tuple(int(i) for i in flips),
        threads=threads,
        delegate=delegate,
    )


def _split(agree: np.ndarray, pivot_agree: np.ndarray) -> dict[str, int]:
    from core.metrics.agreement import disagreement_causes, split_counts

    return split_counts(disagreement_causes(agree, pivot_agree))


def _runner(run: RunContext, variant: _Evaluated, runtime: Runtime) -> Runner:
    """The runner of `variant` under `runtime`, or QuantLensError saying why it cannot run."""
    from core.engine.runtime import Kernels, TFLiteRunner, TFLMRunner, tflm_available
    from core.engine.stages.measure import run_runner

    name = f"{variant.name}.tflite"
    if runtime is Runtime.TFLM:
        missing = tflm_available()
        if missing is not None:
            raise QuantLensError(missing)
        from core.engine.flatbuffer import integer_only

        check = integer_only(variant.tflite)
        if not check.integer_only:
            # A blocker reads "CONV_2D <tensor name> (FLOAT32)": the op types say enough here.
            kinds = ", ".join(dict.fromkeys(b.split(" ", 1)[0] for b in check.blockers))
            raise QuantLensError(
                f"{variant.name} is not integer-only ({len(check.blockers)} ops compute in "
                f"float: {kinds}); TFLite-Micro runs integer models"
            )
        return TFLMRunner(variant.tflite, name=name, preset=run.job.preset)
    if runtime is Runtime.XNNPACK1:
        return run_runner(run, variant.tflite, name=name, threads=RUNTIME_THREADS)
    kernels = Kernels.BUILTIN if runtime is Runtime.BUILTIN else Kernels.REFERENCE
    # One image per invoke: the slow kernels gain nothing from batches, and batch 1 is what a
    # device runs.
    return TFLiteRunner(
        variant.tflite,
        threads=RUNTIME_THREADS,
        name=name,
        kernels=kernels,
        preset=run.job.preset,
    )


def _delegate(runner: Runner) -> str:
    from core.engine.runtime import TFLiteRunner

    return (
        str(runner.describe()["delegate"]) if isinstance(runner, TFLiteRunner) else "tflite-micro"
    )


def _reference_rows(reference: ReferenceOutputs, positions: np.ndarray) -> np.ndarray:
    """The original's probabilities at `positions` (float64), read from reference.probs.npy."""
    probs = np.load(reference.probs_path, mmap_mode="r")
    return np.asarray(probs[positions], dtype=np.float64)


def _pixel_batches(
    run: RunContext, reference: ReferenceOutputs, positions: np.ndarray
) -> Iterator[np.ndarray]:
    """Decoded uint8 images at `positions`, BATCH at a time: from the decoded-image cache, or
    on --engine ray (whose head keeps no cache of every image) decoded by the same decoder."""
    if run.job.engine == "ray":
        from core.engine.stages.diagnose import row_samples
        from core.inputs.images import decode_image

        rows = row_samples(run, reference)
        height, width, channels = run.image_shape
        for start in range(0, len(positions), BATCH):
            yield np.stack(
                [
                    decode_image(rows[int(p)].path, height=height, width=width, channels=channels)
                    for p in positions[start : start + BATCH]
                ]
            )
        return
    cache = DecodedCache(run.run_dir / DECODED_CACHE, run.image_shape)
    if len(positions) == len(cache):
        yield from cache.batches()
        return
    for start in range(0, len(positions), BATCH):
        yield np.stack([cache.read(int(p)) for p in positions[start : start + BATCH]])
