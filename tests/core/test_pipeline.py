"""The pipeline's steps, each on its own: sample draws, label checks, the decoded-image cache,
calibration draws, the reproduce command, the logits-or-probabilities decision, and report.json
kept current after every variant."""

from __future__ import annotations

import csv
import json
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from core.engine.pipeline import run_job
from core.engine.stages.decode import (
    OVERLAPPING,
    calibration_plan,
    decode_batch,
    decode_pool,
    select_samples,
)
from core.engine.stages.files import DecodedCache
from core.engine.stages.start import drop_labels_outside, reproduce_command
from core.runfolder.protocol import DECODED_CACHE
from core.types import Dataset, JobSpec, Preset, Sample, SkippedSample


def _samples(n: int, labels: list[int | None] | None = None) -> tuple[Sample, ...]:
    labels = labels if labels is not None else [i % 3 for i in range(n)]
    return tuple(
        Sample(index=i, path=f"/data/{i}.png", relpath=f"{i}.png", label=labels[i])
        for i in range(n)
    )


# -- select_samples ---------------------------------------------------------------------------
def test_select_samples_keeps_everything_without_a_cap_or_below_it() -> None:
    samples = _samples(7)
    assert select_samples(samples, None, seed=0) == list(samples)
    assert select_samples(samples, 7, seed=0) == list(samples)
    assert select_samples(samples, 50, seed=3) == list(samples)


def test_select_samples_draws_count_distinct_samples_in_data_set_order() -> None:
    samples = _samples(40)
    chosen = select_samples(samples, 10, seed=1)
    indices = [s.index for s in chosen]
    assert len(indices) == len(set(indices)) == 10
    assert indices == sorted(indices)
    assert all(s is samples[s.index] for s in chosen)


def test_select_samples_is_fixed_by_its_seed() -> None:
    samples = _samples(40)
    first = select_samples(samples, 10, seed=1)
    assert select_samples(samples, 10, seed=1) == first
    draws = {tuple(s.index for s in select_samples(samples, 10, seed=seed)) for seed in range(5)}
    assert len(draws) > 1  # the seed matters: five seeds do not all draw the same ten
    assert select_samples(samples, 0, seed=1) == []


# -- drop_labels_outside ----------------------------------------------------------------------
def test_labels_the_model_cannot_predict_are_skipped_with_a_reason() -> None:
    dataset = Dataset(
        path="/data",
        kind="csv",
        samples=_samples(5, [0, 4, None, 2, 3]),
        skipped=(SkippedSample(relpath="gone.png", reason="file not found"),),
        has_labels=True,
    )
    kept = drop_labels_outside(dataset, num_classes=3)
    assert [s.index for s in kept.samples] == [0, 2, 3]
    assert kept.skipped == (
        SkippedSample(relpath="gone.png", reason="file not found"),
        SkippedSample(relpath="1.png", reason="label 4 is outside the model's 3 classes"),
        SkippedSample(relpath="4.png", reason="label 3 is outside the model's 3 classes"),
    )


def test_a_data_set_whose_labels_all_fit_is_returned_as_it_is() -> None:
    dataset = Dataset(path="/data", kind="csv", samples=_samples(4, [0, 1, None, 2]))
    assert drop_labels_outside(dataset, num_classes=3) is dataset


# -- DecodedCache -----------------------------------------------------------------------------
def test_decoded_cache_appends_reads_and_batches(tmp_path: Path) -> None:
    shape = (3, 2, 3)
    images = np.arange(7 * 18, dtype=np.int64).reshape((7, *shape)) % 256
    cache = DecodedCache(tmp_path / DECODED_CACHE, shape)
    assert len(cache) == 0
    cache.append(images[:4].astype(np.uint8))
    cache.append(images[4:].astype(np.uint8))
    assert len(cache) == 7
    assert (tmp_path / DECODED_CACHE).stat().st_size == 7 * 18  # raw uint8, no header
    for i in (0, 3, 4, 6):
        np.testing.assert_array_equal(cache.read(i), images[i])
    batches = list(cache.batches(3))
    assert [len(b) for b in batches] == [3, 3, 1]
    assert all(b.dtype == np.uint8 and b.shape[1:] == shape for b in batches)
    np.testing.assert_array_equal(np.concatenate(batches), images)


# -- _calibration_set -------------------------------------------------------------------------
GOOD, BROKEN = 12, 6


def _colour(i: int) -> tuple[int, int, int]:
    return (10 + 13 * i, 240 - 13 * i, 5 * i)


@pytest.fixture
def mixed_data(tmp_path: Path) -> Path:
    """GOOD solid-colour images (colour i identifies image i) and BROKEN text files named .png."""
    rows = []
    for i in range(GOOD + BROKEN):
        name = f"{i:02d}.png"
        if i % 3 == 1:  # every third file is broken: 6 of 18
            (tmp_path / name).write_text("not an image", encoding="utf-8")
        else:
            Image.new("RGB", (4, 4), _colour(i)).save(tmp_path / name)
        rows.append((name, 0))
    with (tmp_path / "data.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("filepath", "label"), *rows])
    return tmp_path / "data.csv"


def _calibration_inputs(
    tmp_path: Path, data: Path, wanted: int, evaluate: int
) -> tuple[JobSpec, Dataset, list[Sample], list[Sample], DecodedCache]:
    """What the decode stage hands the calibration draw: no model is needed for this step."""
    from core.inputs.datasets import load_dataset

    job = JobSpec(
        model_path="unused",
        data_path=str(data),
        preset=Preset.RAW,  # floats equal the pixels, so each image names its sample
        calibration_samples=wanted,
        max_samples=evaluate,
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    dataset = load_dataset(data)
    evaluated = select_samples(dataset.samples, evaluate, seed=job.seed)
    kept, images, _ = decode_batch(evaluated, height=4, width=4, channels=3)
    cache = DecodedCache(run_dir / DECODED_CACHE, (4, 4, 3))
    cache.append(np.stack(images))
    return job, dataset, evaluated, kept, cache


def _calibration_draw(
    job: JobSpec, dataset: Dataset, kept: list[Sample], cache: DecodedCache
) -> np.ndarray:
    """The run's calibration pixels: 18 images are fewer than twice the count, so they overlap."""
    plan = calibration_plan(dataset, job, None)
    assert plan.source == OVERLAPPING
    _, pixels = decode_pool(plan, job.calibration_samples, [s.index for s in kept], cache)
    return pixels


def _which(calibration: np.ndarray) -> list[int]:
    """The sample each calibration image shows, from its colour."""
    colours = {_colour(i): i for i in range(GOOD + BROKEN)}
    return [colours[tuple(int(v) for v in image[0, 0])] for image in calibration]


def test_calibration_replaces_undecodable_draws(tmp_path: Path, mixed_data: Path) -> None:
    job, dataset, evaluated, kept, cache = _calibration_inputs(
        tmp_path, mixed_data, wanted=10, evaluate=9
    )
    assert len(kept) < len(evaluated)  # some evaluated images are broken too
    calibration = _calibration_draw(job, dataset, kept, cache)
    assert calibration.shape == (10, 4, 4, 3)
    drawn = _which(calibration)
    assert len(set(drawn)) == 10
    assert all(i % 3 != 1 for i in drawn)  # no broken file, and still 10 images
    again = _calibration_draw(job, dataset, kept, cache)
    np.testing.assert_array_equal(again, calibration)


def test_calibration_takes_every_decodable_image_when_asked_for_more(
    tmp_path: Path, mixed_data: Path
) -> None:
    job, dataset, _evaluated, kept, cache = _calibration_inputs(
        tmp_path, mixed_data, wanted=100, evaluate=5
    )
    calibration = _calibration_draw(job, dataset, kept, cache)
    assert sorted(_which(calibration)) == [i for i in range(GOOD + BROKEN) if i % 3 != 1]


# -- reproduce_command ------------------------------------------------------------------------
def test_reproduce_command_round_trips_through_the_cli_parser(tmp_path: Path) -> None:
    from core.cli import _job_from_args, _parser

    folder = tmp_path / "with space's"
    folder.mkdir()
    (folder / "model dir").mkdir()
    (folder / "data.csv").write_text("filepath,label\n", encoding="utf-8")
    (folder / "labels.txt").write_text("a\nb\n", encoding="utf-8")
    job = JobSpec(
        model_path=str(folder / "model dir"),
        data_path=str(folder / "data.csv"),
        variants=("float32", "int8-uint8", "float16+tf"),
        preset=Preset.CAFFE,
        calibration_samples=37,
        max_samples=250,
        threads=3,
        min_agreement_pct=99.99999,  # `:g` alone would print 100
        latency_runs=7,
        latency_budget_s=0.75,
        labels_file=str(folder / "labels.txt"),
        trusted=True,
        input_size=(96, 128),
        signature_key="my sig",
        mlflow_uri="http://mlflow.test:5000",  # the reproduced run is logged as this one was
        calibration_data=str(folder),  # a separate calibration set (issue 13)
        calibration_sweep=(10, 50),
        sweep_seeds=2,
        auto_fix=3,
        fix="integer-only",  # the fix ladder's options (core.engine.fixes)
        fix_budget=9,
    )
    argv = shlex.split(reproduce_command(job))
    assert argv[:3] == ["python", "-m", "core"]
    parsed = _job_from_args(_parser().parse_args(argv[3:]))
    assert parsed == job


def test_reproduce_command_of_a_default_job_round_trips(tmp_path: Path) -> None:
    from core.cli import _job_from_args, _parser

    (tmp_path / "m.keras").write_bytes(b"")
    (tmp_path / "d.csv").write_text("filepath,label\n", encoding="utf-8")
    job = JobSpec(model_path=str(tmp_path / "m.keras"), data_path=str(tmp_path / "d.csv"))
    argv = shlex.split(reproduce_command(job))
    assert argv[argv.index("--min-agreement") + 1] == "95"  # short where it is exact
    assert "--latency-runs" not in argv  # the default is left out
    parsed = _job_from_args(_parser().parse_args(argv[3:]))
    assert parsed == job


# -- the logits-or-probabilities decision and report.json, through the job (TensorFlow) ---------
def _many_class_model(path: Path, *, classes: int, softmax: bool) -> None:
    import keras
    from keras import layers

    keras.utils.set_random_seed(7)
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dense(32, activation="relu")(x)
    outputs = layers.Dense(classes, activation="softmax" if softmax else None)(x)
    keras.Model(inputs, outputs).export(str(path), verbose=False)


def _litert_raw(tflite: bytes, images: np.ndarray) -> np.ndarray:
    """The model's raw float outputs, run here with ai_edge_litert (float I/O variants only)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite, num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    assert inp["dtype"] == np.float32 and out["dtype"] == np.float32
    rows = []
    for image in images:
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0].astype(np.float64))
    return np.stack(rows)


def _unit_inputs(csv_path: Path) -> np.ndarray:
    with csv_path.open(encoding="utf-8") as f:
        paths = [csv_path.parent / r["filepath"] for r in csv.DictReader(f)]
    pixels = [
        np.asarray(Image.open(p).convert("RGB").resize((16, 16), Image.Resampling.BILINEAR))
        for p in paths
    ]
    return np.stack(pixels).astype(np.float32) / np.float32(255.0)


def _run_job(
    model: Path,
    data: Path,
    run_dir: Path,
    variants: tuple[str, ...],
    progress: Callable[[Any], None] = lambda _event: None,
) -> dict[str, Any]:
    from core.inputs import rundir

    run_dir.mkdir()
    job = JobSpec(
        model_path=str(model),
        data_path=str(data),
        variants=variants,
        preset=Preset.UNIT,
        threads=1,
        latency_runs=2,
        warmup_runs=1,
    )
    run_job(job, run_dir, progress=progress, cache_dir=None)
    report: dict[str, Any] = rundir.read_json(run_dir / rundir.REPORT)
    return report


@pytest.mark.slow
@pytest.mark.parametrize("softmax", [True, False], ids=["probabilities", "logits"])
def test_variants_inherit_the_reference_decision_with_many_classes(
    softmax: bool, tiny_data: Path, tmp_path: Path
) -> None:
    """100 classes: an int8-float32 softmax row misses 1 by up to ~0.04, int16x8's by less. Both
    keep the original's decision: probabilities stay as they are, logits are softmaxed."""
    _many_class_model(tmp_path / "model", classes=100, softmax=softmax)
    report = _run_job(tmp_path / "model", tiny_data, tmp_path / "run", ("int8-float32", "int16x8"))
    assert report["reference"]["softmax_applied"] is not softmax
    inputs = _unit_inputs(tiny_data)
    for variant in report["variants"]:
        assert variant["status"] == "done", variant["error"]
        assert variant["softmax_applied"] is not softmax
        raw = _litert_raw((tmp_path / "run" / f"{variant['name']}.tflite").read_bytes(), inputs)
        if softmax:
            expected = raw
        else:
            e = np.exp(raw - raw.max(axis=1, keepdims=True))
            expected = e / e.sum(axis=1, keepdims=True)
        written = np.load(tmp_path / "run" / f"{variant['name']}.probs.npy")
        np.testing.assert_allclose(written, expected, atol=1e-6, err_msg=variant["name"])
    if softmax:
        int8 = np.load(tmp_path / "run" / "int8-float32.probs.npy").astype(np.float64)
        # The premise: judged on its own, this output would have been taken for logits.
        assert np.abs(int8.sum(axis=1) - 1).max() > 1e-3


@pytest.mark.slow
def test_report_is_written_after_each_variant(tiny_data: Path, tmp_path: Path) -> None:
    """When a variant's finished event fires, report.json on disk already holds its numbers."""
    from core.inputs import rundir
    from core.types import ProgressEvent

    _many_class_model(tmp_path / "model", classes=4, softmax=True)
    run_dir = tmp_path / "run"
    seen: dict[str, dict[str, Any]] = {}

    def on_event(event: ProgressEvent) -> None:
        if event.step == "variant" and event.variant:
            on_disk = json.loads((run_dir / rundir.REPORT).read_text(encoding="utf-8"))
            seen[event.variant] = {v["name"]: v for v in on_disk["variants"]}

    variants = ("float32", "float16", "dynamic")
    report = _run_job(tmp_path / "model", tiny_data, run_dir, variants, progress=on_event)
    assert list(seen) == list(variants)
    for position, name in enumerate(variants):
        snapshot = seen[name]
        assert snapshot[name]["status"] == "done"
        assert snapshot[name]["top1_agreement_pct"] is not None
        assert (run_dir / f"{name}.samples.csv").exists()
        for later in variants[position + 1 :]:
            assert snapshot[later]["status"] in ("pending", "running")
    final = {v["name"]: v for v in report["variants"]}
    for name in variants:
        assert seen[name][name]["top1_agreement_pct"] == final[name]["top1_agreement_pct"]


@pytest.mark.slow
def test_a_restarted_worker_keeps_the_reference_decision(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    """After a crash, the next worker reads the decision back with the reference's outputs."""
    from core.inputs import rundir
    from core.runfolder.protocol import DECODE_STATE
    from core.types import ProgressEvent

    class Crash(Exception):
        pass

    def crash_in_float16(event: ProgressEvent) -> None:
        if event.step == "infer" and event.variant == "float16":
            raise Crash

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job = JobSpec(
        model_path=str(tiny_models["logits_saved_model"]),
        data_path=str(tiny_data),
        variants=("float32", "float16"),
        preset=Preset.UNIT,
        threads=1,
        latency_runs=2,
        warmup_runs=1,
    )
    with pytest.raises(Crash):
        run_job(job, run_dir, progress=crash_in_float16, cache_dir=None)
    assert (run_dir / DECODE_STATE).exists()  # the restart takes the saved reference pass
    run_job(job, run_dir, progress=lambda _e: None, cache_dir=None)
    report = rundir.read_json(run_dir / rundir.REPORT)
    assert report["reference"]["softmax_applied"] is True
    inputs = _unit_inputs(tiny_data)
    for variant in report["variants"]:
        assert variant["status"] == "done", variant["error"]
        assert variant["softmax_applied"] is True
        raw = _litert_raw((run_dir / f"{variant['name']}.tflite").read_bytes(), inputs)
        e = np.exp(raw - raw.max(axis=1, keepdims=True))
        np.testing.assert_allclose(
            np.load(run_dir / f"{variant['name']}.probs.npy"),
            e / e.sum(axis=1, keepdims=True),
            atol=1e-6,
        )


_LOCK_HOLDER = """
import sys, time
from pathlib import Path
from core import posix
# Holds the lock until the job says it is waiting (the release file appears), at most 120 s:
# a fixed hold would be over before a job on a busy machine reaches its timing.
with posix.host_lock(Path(sys.argv[1]), on_wait=lambda: None):
    print("acquired", flush=True)
    deadline = time.time() + 120
    while not Path(sys.argv[2]).exists() and time.time() < deadline:
        time.sleep(0.05)
    print("released", time.time(), flush=True)
"""


@pytest.mark.slow
def test_timing_waits_for_another_job_and_records_how_it_timed(
    tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process holding the host-wide timing lock delays timing, and the job says why;
    without --latency-runs the job times for its budget on every core but one."""
    import os
    import subprocess
    import sys

    from core import posix
    from core.inputs import rundir
    from core.types import ProgressEvent

    lock = tmp_path / "timing.lock"
    monkeypatch.setattr(posix, "TIMING_LOCK", lock)
    _many_class_model(tmp_path / "model", classes=4, softmax=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", _LOCK_HOLDER, str(lock), str(tmp_path / "release")],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "acquired\n"
    events: list[ProgressEvent] = []
    job = JobSpec(
        model_path=str(tmp_path / "model"),
        data_path=str(tiny_data),
        variants=("float16",),
        preset=Preset.UNIT,
        latency_budget_s=0.2,
        warmup_runs=1,
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    waiting = "waiting for another QuantLens job to finish timing"

    def record(event: ProgressEvent) -> None:
        events.append(event)
        if event.message == waiting:
            (tmp_path / "release").touch()

    run_job(job, run_dir, progress=record, cache_dir=None)
    released = float(holder.communicate(timeout=60)[0].split()[-1])
    messages = [e.message for e in events]
    assert waiting in messages
    first_timing = next(e for e in events if e.message.startswith("timing the original"))
    assert first_timing.time >= released
    report = rundir.read_json(run_dir / rundir.REPORT)
    assert report["options"]["latency_runs"] is None
    assert report["options"]["latency_budget_s"] == 0.2
    assert report["environment"]["threads"] == max(1, (os.cpu_count() or 1) - 1)
    for lat in (report["reference"]["latency_ms"], report["variants"][0]["latency_ms"]):
        assert lat["n"] >= 10 and lat["max"] >= lat["p50"]
