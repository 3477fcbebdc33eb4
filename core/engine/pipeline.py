"""Run one job inside the worker: decode once, reference once, then convert, infer and time each variant.

Images are decoded once, in a streaming pass, into an on-disk uint8 cache in the run
directory; every variant then reads that cache batch by batch, so memory does not grow with
the number of images beyond the per-sample records. Each finished variant is written to
report.json at once (atomically), so a crash in a later variant loses nothing.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from core.engine.convert import NEEDS_CALIBRATION, PROBE_IMAGES, ConversionResult
from core.engine.faults import maybe_inject
from core.engine.timing import time_invocations
from core.errors import QuantLensError
from core.inputs import rundir
from core.metrics.agreement import (
    agreement,
    disagreement_causes,
    outputs_are_probabilities,
    records_table,
    sample_records,
    split_counts,
    to_probabilities,
    top1,
)
from core.metrics.latency import latency_stats, unstable_timing
from core.types import (
    Dataset,
    JobSpec,
    LatencyStats,
    Mode,
    ProgressEvent,
    RunStatus,
    Sample,
    SkippedSample,
    VariantSpec,
)

ProgressFn = Callable[[ProgressEvent], None]
BATCH = 32
DECODED_CACHE = ".decoded.u8"  # raw uint8 [N,H,W,C], removed when the job ends
DECODE_STATE = ".decoded.json"
CALIBRATION_CACHE = ".calibration.npy"
CONVERTING = ".converting"  # the variant the conversion thread is working on
FINISHED = frozenset({"done", "failed", "crashed", "timeout", "cancelled"})


@dataclass(frozen=True)
class Inputs:
    """The resolved model and data of a job (zips extracted, paths checked)."""

    model_path: Path
    dataset: Dataset


def _event(
    progress: ProgressFn, step: str, fraction: float, message: str, variant: str | None = None
) -> None:
    progress(
        ProgressEvent(
            step=step, fraction=fraction, message=message, variant=variant, time=time.time()
        )
    )


def resolve_inputs(job: JobSpec, run_dir: Path) -> Inputs:
    """Extract zipped models or data into the run directory and enumerate the data set."""
    from core.errors import UnsupportedModel
    from core.inputs.archives import extract_once, find_saved_model_dir
    from core.inputs.data import load_dataset
    from core.inputs.paths import allowed_roots, require_under_roots

    roots = allowed_roots()
    model_path = require_under_roots(Path(job.model_path), roots, what="model")
    if model_path.suffix.lower() == ".zip":
        target = extract_once(model_path, run_dir / "model")
        kerases = sorted(p for p in target.rglob("*.keras") if "__MACOSX" not in p.parts)
        if (list(target.rglob("saved_model.pb"))) or not kerases:
            model_path = find_saved_model_dir(target)
        elif len(kerases) == 1:
            model_path = kerases[0]
        else:
            raise UnsupportedModel(
                f"{Path(job.model_path).name} holds {len(kerases)} .keras files; zip one model"
            )
    # A restarted worker reuses run_dir/data through the same call, so it reads the same samples.
    dataset = load_dataset(
        job.data_path,
        labels_file=job.labels_file,
        extract_dir=run_dir / "data",
        allowed_roots=roots,
    )
    return Inputs(model_path=model_path, dataset=dataset)


def select_samples(samples: Sequence[Sample], count: int | None, *, seed: int) -> list[Sample]:
    """`count` samples drawn with a fixed seed, in data set order; all of them when count is None."""
    if count is None or count >= len(samples):
        return list(samples)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(samples), size=max(count, 0), replace=False))
    return [samples[i] for i in chosen]


def drop_labels_outside(dataset: Dataset, num_classes: int) -> Dataset:
    """Skip samples whose integer label the model cannot predict; they are listed, not scored."""
    from dataclasses import replace

    kept = tuple(s for s in dataset.samples if s.label is None or s.label < num_classes)
    if len(kept) == len(dataset.samples):
        return dataset
    skipped = tuple(
        SkippedSample(
            relpath=s.relpath,
            reason=f"label {s.label} is outside the model's {num_classes} classes",
        )
        for s in dataset.samples
        if s.label is not None and s.label >= num_classes
    )
    return replace(dataset, samples=kept, skipped=dataset.skipped + skipped)


class DecodedCache:
    """Decoded uint8 images on disk, written once and read back in batches without mmap.

    Reading with explicit file reads keeps the resident set to one batch; a memory map would
    keep every touched page resident and grow with the data set.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int]) -> None:
        self.path = path
        self.shape = shape
        self.item = int(np.prod(shape))

    def append(self, images: np.ndarray) -> None:
        with self.path.open("ab") as f:
            f.write(np.ascontiguousarray(images, dtype=np.uint8).tobytes())

    def __len__(self) -> int:
        return self.path.stat().st_size // self.item if self.path.exists() else 0

    def read(self, position: int) -> np.ndarray:
        """One decoded image by its position in the cache."""
        with self.path.open("rb") as f:
            f.seek(position * self.item)
            return np.frombuffer(f.read(self.item), dtype=np.uint8).reshape(self.shape)

    def batches(self, size: int = BATCH) -> Iterator[np.ndarray]:
        total = len(self)
        with self.path.open("rb") as f:
            for start in range(0, total, size):
                count = min(size, total - start)
                data = np.frombuffer(f.read(count * self.item), dtype=np.uint8)
                yield data.reshape((count, *self.shape))


def _decode_batch(
    samples: Sequence[Sample], *, height: int, width: int, channels: int
) -> tuple[list[Sample], list[np.ndarray], list[SkippedSample]]:
    from core.errors import ImageDecodeError
    from core.inputs.data import decode_image

    kept: list[Sample] = []
    images: list[np.ndarray] = []
    skipped: list[SkippedSample] = []
    for sample in samples:
        try:
            images.append(decode_image(sample.path, height=height, width=width, channels=channels))
            kept.append(sample)
        except ImageDecodeError as exc:
            skipped.append(SkippedSample(relpath=sample.relpath, reason=str(exc)))
    return kept, images, skipped


def _write_csv(path: Path, columns: dict[str, Any]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    names = list(columns)
    writer.writerow(names)
    for row in zip(*(columns[n] for n in names), strict=True):
        writer.writerow([_csv_value(v) for v in row])
    rundir.write_atomic(path, buffer.getvalue().encode("utf-8"))


def _csv_value(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return "" if not np.isfinite(value) else f"{float(value):.6g}"
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    rundir.write_atomic(path, buffer.getvalue())


class JobRunner:
    """The state of one job in the worker; `run()` does the work and keeps report.json current."""

    def __init__(
        self, job: JobSpec, run_dir: Path, *, progress: ProgressFn, cache_dir: Path | None
    ) -> None:
        self.job = job
        self.run_dir = run_dir
        self.progress = progress
        self.cache_dir = cache_dir
        from core.reporting.report import with_pivot

        selected = [VariantSpec.parse(name) for name in job.variants]
        # The float32 pivot joins whenever a variant is quantized (see core.reporting.report.with_pivot).
        self.specs = with_pivot(selected)
        self.selected_names = {spec.name for spec in selected}
        report_path = run_dir / rundir.REPORT
        # A restarted worker (after a crash in one variant) continues the same report.
        self.report: dict[str, Any] = rundir.read_json(report_path) if report_path.exists() else {}
        # Variants --auto-fix added before a crash are part of the job from then on.
        known = {spec.name for spec in self.specs}
        for entry in self.report.get("variants") or []:
            if entry.get("derived_by") and entry["name"] not in known:
                self.specs.append(VariantSpec.parse(entry["name"]))

    # -- report ---------------------------------------------------------------------------
    def save_report(self) -> None:
        from core.reporting.report import fill_float32_reductions

        fill_float32_reductions(self.report)
        rundir.write_json_atomic(self.run_dir / rundir.REPORT, self.report)

    def variant_entry(self, name: str) -> dict[str, Any]:
        return next(v for v in self.report["variants"] if v["name"] == name)

    # -- phases ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        import tensorflow as tf

        from core.engine.models import load_reference, model_sha256, model_size_bytes
        from core.reporting.report import (
            ROLE_PIVOT,
            ROLE_SELECTED,
            SCHEMA_VERSION,
            environment,
            pending_variant,
            pivot_name,
        )

        job = self.job
        _event(self.progress, "load", 0.0, "reading the data set and the model")
        maybe_inject("load")
        inputs = resolve_inputs(job, self.run_dir)
        input_size = tuple(job.input_size) if job.input_size else None
        model = load_reference(
            inputs.model_path,
            trusted=job.trusted,
            input_size=input_size,  # type: ignore[arg-type]
            signature_key=job.signature_key,
        )
        sig = model.signature
        self.model = model
        self.model_sha = model_sha256(inputs.model_path)
        if not self.report:
            from core.inputs.data import dataset_sha256, preset_value_range

            self.report = {
                "schema_version": SCHEMA_VERSION,
                "run": {
                    "id": self.run_dir.name,
                    "name": job.name,
                    "created": datetime.now(UTC).isoformat(timespec="seconds"),
                    "status": str(RunStatus.RUNNING),
                    "command": reproduce_command(job),
                    "trusted": job.trusted,
                },
                "reference": {
                    "path": str(inputs.model_path),
                    "format": sig.format,
                    "size_bytes": model_size_bytes(inputs.model_path),
                    "sha256": self.model_sha,
                    "input_shape": list(sig.input_shape),
                    "input_dtype": sig.input_dtype,
                    "num_classes": sig.num_classes,
                    "outputs_probabilities": sig.outputs_probabilities,
                    "accuracy_pct": None,
                    "latency_ms": None,
                },
                "dataset": {
                    "path": inputs.dataset.path,
                    "file": job.data_path,  # the CSV (or folder, zip) the user named
                    "sha256": dataset_sha256(inputs.dataset),
                    "kind": inputs.dataset.kind,
                    "num_samples": 0,
                    "num_skipped": len(inputs.dataset.skipped),
                    "has_labels": inputs.dataset.has_labels,
                    "class_names": list(inputs.dataset.class_names)
                    if inputs.dataset.class_names
                    else None,
                    "skipped": [s.to_dict() for s in inputs.dataset.skipped],
                },
                "preprocessing": {
                    "preset": str(job.preset),
                    "height": sig.height,
                    "width": sig.width,
                    "channels": sig.channels,
                    "value_range": list(preset_value_range(job.preset)),
                },
                "options": {
                    "calibration_samples": job.calibration_samples,
                    "max_samples": job.max_samples,
                    "threads": job.threads,
                    "min_agreement_pct": job.min_agreement_pct,
                    "verdict": job.verdict,
                    "seed": job.seed,
                    "latency_runs": job.latency_runs,  # None: as many as the budget allows
                    "latency_budget_s": None if job.latency_runs else job.latency_budget_s,
                    "warmup_runs": job.warmup_runs,
                },
                "pivot": pivot_name(self.specs),
                "variants": [
                    pending_variant(
                        spec,
                        role=ROLE_SELECTED if spec.name in self.selected_names else ROLE_PIVOT,
                    )
                    for spec in self.specs
                ],
                "environment": environment(threads=effective_threads(job)),
                "warnings": [],
            }
            self._check_classes(inputs.dataset, sig.num_classes)
            self.save_report()
        if inputs.dataset.class_names:
            rundir.write_atomic(
                self.run_dir / rundir.LABELS,
                ("\n".join(inputs.dataset.class_names) + "\n").encode(),
            )
        dataset = drop_labels_outside(inputs.dataset, sig.num_classes)
        pending = [s for s in self.specs if self.variant_entry(s.name)["status"] not in FINISHED]
        # The pivot runs first, so its outputs exist when each quantized variant is split.
        pending.sort(key=lambda s: s.name != self.report.get("pivot"))
        self.labels, self.calibration = self._decode_and_reference(dataset)
        # Conversions run one after another on a second thread (the converter releases the
        # GIL) while this thread runs each converted model on the images. They start after
        # the original's pass so the two largest memory users never overlap: peak memory is
        # one conversion's, whatever the number of images.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quantlens-convert")
        probe = self._first_images(PROBE_IMAGES)
        try:
            futures: dict[str, Future[ConversionResult]] = {
                spec.name: pool.submit(
                    convert_in_background,
                    self,
                    spec,
                    self.calibration if spec.mode in NEEDS_CALIBRATION else None,
                    probe,
                )
                for spec in pending
            }
            for spec in pending:
                self._run_variant(spec, futures[spec.name])
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        from core.engine.layer_stage import auto_fix

        auto_fix(self)
        # Timing waits until no conversion competes for the cores.
        self._time_models(tf)
        self._finish()
        return self.report

    def _check_classes(self, dataset: Dataset, num_classes: int) -> None:
        names = dataset.class_names
        if names and len(names) != num_classes:
            self.report["warnings"].append(
                f"the data set names {len(names)} classes but the model outputs {num_classes}; "
                "check labels.txt or the class folders"
            )

    def _decode_and_reference(self, dataset: Dataset) -> tuple[np.ndarray, np.ndarray | None]:
        """Decode every evaluation image once, run the reference on each batch, keep calibration."""
        from core.inputs.data import apply_preset

        sig = self.model.signature
        shape = (sig.height, sig.width, sig.channels)
        cache = DecodedCache(self.run_dir / DECODED_CACHE, shape)
        state_path = self.run_dir / DECODE_STATE
        probs_path = self.run_dir / rundir.REFERENCE_PROBS
        if state_path.exists() and probs_path.exists():
            state = rundir.read_json(state_path)
            saved = np.load(self.run_dir / CALIBRATION_CACHE) if state["has_calibration"] else None
            self.ref_probs = np.load(probs_path).astype(np.float64)
            self.softmax = bool(state["softmax"])
            return np.asarray(state["labels"], dtype=np.int64), saved

        evaluated = select_samples(dataset.samples, self.job.max_samples, seed=self.job.seed)
        cache.path.unlink(missing_ok=True)
        kept_samples: list[Sample] = []
        skipped: list[SkippedSample] = list(dataset.skipped)
        outputs: list[np.ndarray] = []
        total = len(evaluated)
        for start in range(0, total, BATCH):
            # Each event names the step about to run, so a crash inside it is reported there.
            _event(
                self.progress,
                "decode",
                start / total,
                f"decoding images {start + 1}-{min(start + BATCH, total)} of {total}",
            )
            maybe_inject("decode")
            batch_samples = evaluated[start : start + BATCH]
            kept, images, bad = _decode_batch(
                batch_samples, height=sig.height, width=sig.width, channels=sig.channels
            )
            skipped.extend(bad)
            if not kept:
                continue
            pixels = np.stack(images)
            cache.append(pixels)
            floats = apply_preset(pixels, self.job.preset)
            done = min(start + BATCH, total)
            _event(
                self.progress,
                "reference",
                done / total,
                f"running the original on {done}/{total} images",
            )
            maybe_inject("reference")
            outputs.append(self.model.predict(floats))
            kept_samples.extend(kept)
        if not kept_samples:
            from core.errors import DatasetError

            reasons = sorted({s.reason for s in skipped})
            raise DatasetError(
                f"none of the {total} images could be decoded ({'; '.join(reasons[:3])}); check the data set"
            )
        calibration_array = self._calibration_set(dataset, evaluated, kept_samples, cache)

        raw = np.concatenate(outputs)
        # Logits or probabilities is decided here, once, from the original's outputs; every
        # variant inherits the decision (a quantized softmax must not be softmaxed again).
        self.softmax = not outputs_are_probabilities(raw)
        ref_probs = to_probabilities(raw, softmax=self.softmax)
        self.ref_probs = ref_probs
        labels = np.asarray(
            [-1 if s.label is None else s.label for s in kept_samples], dtype=np.int64
        )
        self._write_reference(kept_samples, labels, ref_probs, self.softmax, skipped)
        if calibration_array is not None:
            _save_npy(self.run_dir / CALIBRATION_CACHE, calibration_array)
        rundir.write_json_atomic(
            state_path,
            {
                "labels": labels.tolist(),
                "has_calibration": calibration_array is not None,
                "softmax": self.softmax,
            },
        )
        return labels, calibration_array

    def _calibration_set(
        self, dataset: Dataset, evaluated: list[Sample], kept: list[Sample], cache: DecodedCache
    ) -> np.ndarray | None:
        """`calibration_samples` images drawn from the whole data set with a fixed seed.

        Drawn images that cannot be decoded are replaced by the next ones in the same seeded
        order, so a few broken files never starve int8 of calibration data. Images already
        decoded for evaluation are read back from the cache, not decoded again.
        """
        from core.errors import ImageDecodeError
        from core.inputs.data import apply_preset, decode_image

        sig = self.model.signature
        wanted = self.job.calibration_samples
        position = {s.index: i for i, s in enumerate(kept)}
        evaluated_ids = {s.index for s in evaluated}
        order = np.random.default_rng(self.job.seed + 1).permutation(len(dataset.samples))
        chosen: list[np.ndarray] = []
        for i in order:
            if len(chosen) >= wanted:
                break
            sample = dataset.samples[int(i)]
            if sample.index in position:
                chosen.append(cache.read(position[sample.index]))
            elif sample.index not in evaluated_ids:  # evaluated but undecodable: skip it
                try:
                    chosen.append(
                        decode_image(
                            sample.path, height=sig.height, width=sig.width, channels=sig.channels
                        )
                    )
                except ImageDecodeError:
                    continue
        if not chosen:
            return None
        return apply_preset(np.stack(chosen), self.job.preset).astype(np.float32)

    def _write_reference(
        self,
        samples: list[Sample],
        labels: np.ndarray,
        probs: np.ndarray,
        softmaxed: bool,
        skipped: list[SkippedSample],
    ) -> None:
        from core.reporting.report import near_chance

        ref_top1 = top1(probs)
        ordered = np.sort(np.nan_to_num(probs, nan=-1.0), axis=1)
        margin = ordered[:, -1] - (ordered[:, -2] if probs.shape[1] > 1 else 0.0)
        top_prob = np.take_along_axis(
            np.nan_to_num(probs, nan=np.nan), np.maximum(ref_top1, 0)[:, None], axis=1
        )[:, 0]
        _write_csv(
            self.run_dir / rundir.SAMPLES,
            {
                "index": [s.index for s in samples],
                "relpath": [s.relpath for s in samples],
                "label": ["" if s.label is None else s.label for s in samples],
                "ref_top1": ref_top1,
                "ref_top1_prob": top_prob,
                "ref_margin": margin,
            },
        )
        _write_csv(
            self.run_dir / rundir.SKIPPED,
            {"relpath": [s.relpath for s in skipped], "reason": [s.reason for s in skipped]},
        )
        _save_npy(self.run_dir / rundir.REFERENCE_PROBS, probs.astype(np.float32))
        labelled = labels >= 0
        reference = self.report["reference"]
        reference["softmax_applied"] = softmaxed
        self.report["warnings"].extend(nonfinite_warnings(probs, "the original model"))
        reference["accuracy_pct"] = (
            float(100.0 * np.mean(ref_top1[labelled] == labels[labelled]))
            if labelled.any()
            else None
        )
        dataset = self.report["dataset"]
        dataset["num_samples"] = len(samples)
        dataset["num_skipped"] = len(skipped)
        dataset["skipped"] = [s.to_dict() for s in skipped]
        classes = probs.shape[1]
        if near_chance(reference["accuracy_pct"], classes):
            self.report["warnings"].append(
                f"the original model is only {reference['accuracy_pct']:.1f}% accurate on these labels "
                f"(chance is {100.0 / classes:.1f}%): the preprocessing preset or the labels are probably wrong"
            )
        self.save_report()

    def _first_images(self, count: int) -> np.ndarray:
        """The first `count` evaluation images, preprocessed (float32 [N,H,W,C])."""
        from core.inputs.data import apply_preset

        sig = self.model.signature
        cache = DecodedCache(self.run_dir / DECODED_CACHE, (sig.height, sig.width, sig.channels))
        first = next(cache.batches(count))
        return apply_preset(first, self.job.preset).astype(np.float32)

    def _time_models(self, tf: Any) -> None:
        """Per-invoke latency of the original and every finished variant, on a quiet machine.

        The host-wide lock keeps two QuantLens jobs (other workspaces, a CLI run elsewhere) from
        timing at the same moment on the same cores; the workspace queue only orders runs of
        one workspace.
        """
        from core import posix

        def say_waiting() -> None:
            _event(
                self.progress, "latency", 0.0, "waiting for another QuantLens job to finish timing"
            )

        with posix.host_lock(posix.TIMING_LOCK, on_wait=say_waiting):
            self._time_all(tf)

    def _time_all(self, tf: Any) -> None:
        from core.engine.runtime import TFLiteRunner

        reference = self._reference_latency(tf)
        image = self._first_images(1)[0]
        for spec in self.specs:
            entry = self.variant_entry(spec.name)
            if entry["status"] != "done" or entry.get("latency_ms"):
                continue
            name = spec.name
            _event(self.progress, "latency", 0.0, f"timing {name} at batch 1", name)
            maybe_inject("latency", name)
            tflite = rundir.tflite_path(self.run_dir, name).read_bytes()
            runner = TFLiteRunner(
                tflite, threads=effective_threads(self.job), name=f"{name}.tflite"
            )
            samples, warning = self._stable_samples(runner.timed_invoke(image), name)
            _save_npy(rundir.latency_path(self.run_dir, name), samples)
            stats = latency_stats(samples)
            entry["latency_ms"] = stats.to_dict()
            entry["latency_warning"] = warning
            entry["speedup_vs_reference"] = reference.p50 / stats.p50 if stats.p50 > 0 else None
            self.save_report()

    def _stable_samples(
        self, invoke: Callable[[], object], who: str | None
    ) -> tuple[np.ndarray, str | None]:
        """Time `invoke`; if the spread says the machine was busy, time it once more.

        Returns the samples and, when the second measurement is still unstable, a one-line
        warning for the card (the numbers are kept: a flagged number beats no number).
        """
        runs, warmup = self.job.latency_runs, self.job.warmup_runs
        budget = self.job.latency_budget_s
        samples = time_invocations(invoke, runs=runs, warmup=warmup, budget_s=budget)
        if unstable_timing(samples) is None:
            return samples, None
        _event(self.progress, "latency", 0.5, "timing was unstable; measuring again", who)
        samples = time_invocations(invoke, runs=runs, warmup=warmup, budget_s=budget)
        reason = unstable_timing(samples)
        if reason is None:
            return samples, None
        return (
            samples,
            f"unstable timing ({reason}), measured twice; another load was likely running",
        )

    def _reference_latency(self, tf: Any) -> LatencyStats:
        reference = self.report["reference"]
        path = self.run_dir / rundir.REFERENCE_LATENCY
        if reference.get("latency_ms") and path.exists():
            return latency_stats(np.load(path))
        _event(self.progress, "latency", 0.0, "timing the original model at batch 1")
        x = tf.constant(self._first_images(1))
        serve = self.model.concrete_function
        samples, warning = self._stable_samples(lambda: serve(x), None)
        _save_npy(path, samples)
        stats = latency_stats(samples)
        reference["latency_ms"] = stats.to_dict()
        reference["latency_warning"] = warning
        self.save_report()
        return stats

    def _run_variant(self, spec: VariantSpec, conversion: Future[ConversionResult]) -> None:
        entry = self.variant_entry(spec.name)
        entry["status"] = "running"
        self.save_report()
        try:
            if not conversion.done():
                _event(
                    self.progress, "convert", 0.0, f"waiting for {spec.name} to convert", spec.name
                )
            self._measure_variant(spec, conversion.result())
        except QuantLensError as exc:
            entry = self.variant_entry(spec.name)
            entry["status"] = "failed"
            entry["error"] = str(exc)
            self.save_report()
            _event(self.progress, "variant", 1.0, f"{spec.name} failed: {exc}", spec.name)

    def _measure_variant(self, spec: VariantSpec, result: ConversionResult) -> None:
        from core.engine.runtime import TFLiteRunner
        from core.inputs.data import apply_preset
        from core.reporting.report import finished_variant, verdict

        name = spec.name
        _event(self.progress, "infer", 0.0, f"{name}: preparing the interpreter", name)
        maybe_inject("infer", name)
        runner = TFLiteRunner(
            result.tflite, threads=effective_threads(self.job), name=f"{name}.tflite"
        )
        sig = self.model.signature
        cache = DecodedCache(self.run_dir / DECODED_CACHE, (sig.height, sig.width, sig.channels))
        total = len(cache)
        rows = np.empty((total, sig.num_classes), dtype=np.float32)
        done = 0
        last_report = 0.0
        for pixels in cache.batches():
            for image in apply_preset(pixels, self.job.preset):
                rows[done] = runner.run(image)
                done += 1
            if time.monotonic() - last_report > 0.5 or done == total:
                last_report = time.monotonic()
                _event(
                    self.progress, "infer", done / total, f"{name}: ran {done}/{total} images", name
                )
        probs = to_probabilities(rows, softmax=self.softmax)
        records = sample_records(self.ref_probs, probs)
        columns: dict[str, Any] = {"index": self.sample_indices}
        columns.update(records_table(records))
        causes = self._disagreement_causes(spec, records.agree)
        if causes is not None:
            columns["cause"] = causes
        _write_csv(rundir.variant_samples_path(self.run_dir, name), columns)
        _save_npy(rundir.probs_path(self.run_dir, name), probs.astype(np.float32))
        labels = self.labels if (self.labels >= 0).any() else None
        metrics = agreement(self.ref_probs, probs, labels=labels)
        entry = finished_variant(
            self.variant_entry(name),
            size_bytes=result.size_bytes,
            reference_size=self.report["reference"]["size_bytes"],
            agreement=metrics,
            num_classes=probs.shape[1],
            min_agreement_pct=self.job.min_agreement_pct,
            conversion_seconds=result.seconds,
            conversion_cached=result.cached,
            conversion_route=result.route,
            select_tf_ops_used=result.select_tf_ops_used,
            softmax_applied=self.softmax,
            io=runner.describe(),
            warnings=nonfinite_warnings(rows, "the converted model")
            + self._split_warnings(spec, causes),
            disagreement_split=None if causes is None else split_counts(causes),
            verdict_rule=self.job.verdict,
        )
        self.report["variants"] = [
            entry if v["name"] == name else v for v in self.report["variants"]
        ]
        self.save_report()
        from core.engine.layer_stage import diagnose_finished

        diagnose_finished(self, spec, result, records.agree)
        _event(
            self.progress,
            "variant",
            1.0,
            f"{name}: {metrics.top1_agreement_pct:.2f}% agreement (n={metrics.n}) {verdict(entry)}",
            name,
        )

    def _disagreement_causes(self, spec: VariantSpec, agree: np.ndarray) -> np.ndarray | None:
        """Per sample, "conversion", "quantization" or "" for a quantized variant; None when
        the variant is float32 or the pivot has no outputs (it failed)."""
        pivot = self.report.get("pivot")
        if spec.mode is Mode.FLOAT32 or not pivot:
            return None
        path = rundir.variant_samples_path(self.run_dir, pivot)
        if self.variant_entry(pivot)["status"] != "done" or not path.exists():
            return None
        # The pivot's own written `agree` column, so the split matches what its row reports.
        with path.open(encoding="utf-8") as f:
            pivot_agree = np.array([row["agree"] == "1" for row in csv.DictReader(f)])
        return disagreement_causes(agree, pivot_agree)

    def _split_warnings(self, spec: VariantSpec, causes: np.ndarray | None) -> list[str]:
        if causes is not None or spec.mode is Mode.FLOAT32 or not self.report.get("pivot"):
            return []
        return [
            "no conversion/quantization split: the float32 TFLite pivot did not finish "
            "(see its error)"
        ]

    @cached_property
    def sample_indices(self) -> list[int]:
        """Data set indices of the evaluated samples, in row order (read once per worker)."""
        with (self.run_dir / rundir.SAMPLES).open(encoding="utf-8") as f:
            return [int(row["index"]) for row in csv.DictReader(f)]

    def _finish(self) -> None:
        from core.reporting.recommend import recommendation
        from core.reporting.report import run_status

        self.report["run"]["status"] = str(run_status(self.report))
        self.report["recommendation"] = recommendation(self.report)
        self.save_report()
        for leftover in (DECODED_CACHE, DECODE_STATE, CALIBRATION_CACHE):
            (self.run_dir / leftover).unlink(missing_ok=True)
        _event(self.progress, "done", 1.0, "all variants finished")


def nonfinite_warnings(outputs: np.ndarray, who: str) -> list[str]:
    """A one-line warning when some of a model's [N, C] outputs hold NaN or Inf, else none."""
    bad = int((~np.isfinite(outputs).all(axis=1)).sum())
    if not bad:
        return []
    return [
        f"{who} outputs NaN/Inf on {bad} of {len(outputs)} images; "
        "they count as disagreements and are left out of the probability deltas"
    ]


def effective_threads(job: JobSpec) -> int:
    """The thread count both models run with: the job's, else every core but one."""
    from core.metrics.latency import default_threads

    return job.threads or default_threads()


def convert_in_background(
    runner: JobRunner, spec: VariantSpec, calibration: np.ndarray | None, probe: np.ndarray
) -> ConversionResult:
    """Convert one variant on the conversion thread and write its .tflite file.

    `probe` holds a few evaluation images the new model must answer with finite outputs.

    Keep this name: core.jobs.launch looks for it in a crash dump to tell a converter crash (blame
    the variant named in CONVERTING) from a crash on the main thread (blame the running one).
    """
    from core.engine.convert import tflite_from_reference

    name = spec.name
    marker = runner.run_dir / CONVERTING
    rundir.write_atomic(marker, name.encode())
    _event(runner.progress, "convert", 0.0, f"converting to {name}", name)
    try:
        maybe_inject("convert", name)
        result = tflite_from_reference(
            runner.model,
            spec,
            model_sha256=runner.model_sha,
            calibration=calibration,
            preset=str(runner.job.preset),
            probe=probe,
            cache_dir=runner.cache_dir,
        )
    except MemoryError:
        # Out of memory in the converter: end the worker at once with the marker still
        # naming this variant, as a native crash would; the supervisor reports it and
        # restarts the worker for the other variants.
        import os
        import sys

        from core.jobs.worker import EXIT_OOM

        sys.stderr.write(f"MemoryError: out of memory while converting {name}\n")
        sys.stderr.flush()
        os._exit(EXIT_OOM)
    finally:
        marker.unlink(missing_ok=True)
    rundir.write_atomic(rundir.tflite_path(runner.run_dir, name), result.tflite)
    _event(
        runner.progress,
        "convert",
        1.0,
        f"converted {name} ({result.size_bytes / 1e6:.2f} MB)",
        name,
    )
    return result


def reproduce_command(job: JobSpec) -> str:
    """The CLI command that reproduces this job."""
    import shlex

    parts = [
        "python -m core run",
        shlex.quote(job.model_path),
        "--data",
        shlex.quote(job.data_path),
        "--modes",
        ",".join(job.variants),
        "--preprocess",
        str(job.preset),
        "--calibration-samples",
        str(job.calibration_samples),
        "--min-agreement",
        _exact_number(job.min_agreement_pct),
    ]
    if job.verdict != JobSpec.verdict:
        parts += ["--verdict", job.verdict]
    if job.latency_runs is not None:
        parts += ["--latency-runs", str(job.latency_runs)]
    if job.latency_budget_s != JobSpec.latency_budget_s:
        parts += ["--latency-budget", _exact_number(job.latency_budget_s)]
    if job.max_samples is not None:
        parts += ["--samples", str(job.max_samples)]
    if job.threads is not None:
        parts += ["--threads", str(job.threads)]
    if job.input_size:
        parts += ["--input-size", f"{job.input_size[0]}x{job.input_size[1]}"]
    if job.signature_key:
        parts += ["--signature", shlex.quote(job.signature_key)]
    if job.labels_file:
        parts += ["--labels", shlex.quote(job.labels_file)]
    if job.trusted:
        parts.append("--trusted")
    if job.mlflow_uri:
        parts.append(f"--mlflow={shlex.quote(job.mlflow_uri)}")
    if job.auto_fix:
        parts.append(f"--auto-fix={job.auto_fix}")
    return " ".join(parts)


def _exact_number(value: float) -> str:
    """`95` rather than `95.0`, but never rounded: `:g` alone turns 99.99999 into 100."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)
