"""Each stage of the job on its own, with the real tiny model: what it takes, what it writes in
the run folder, what a restarted worker reads back, and the local evaluation engine."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.engine.pipeline import run_job
from core.engine.stages.context import RunContext
from core.engine.stages.evaluate import (
    EvaluatedVariant,
    evaluate_converted,
)
from core.engine.stages.reference import run_reference
from core.engine.stages.start import open_run
from core.inputs import rundir
from core.runfolder.protocol import DECODE_STATE, DECODED_CACHE, REFERENCE_OUTPUTS
from core.types import JobSpec, Preset, ProgressEvent, VariantSpec

pytestmark = pytest.mark.slow


def _job(model: Path, data: Path, variants: tuple[str, ...] = ("float32",)) -> JobSpec:
    return JobSpec(
        model_path=str(model),
        data_path=str(data),
        variants=variants,
        preset=Preset.UNIT,
        threads=1,
        latency_runs=2,
        warmup_runs=1,
    )


def _with_broken_files(tiny_data: Path, root: Path) -> Path:
    """The tiny data set plus two files that are not images, listed in the same CSV."""
    with tiny_data.open(encoding="utf-8", newline="") as f:
        rows = [(r["filepath"], r["label"]) for r in csv.DictReader(f)]
    for rel, _ in rows:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes((tiny_data.parent / rel).read_bytes())
    for name in ("broken_a.png", "broken_b.png"):
        (root / name).write_text("not an image", encoding="utf-8")
        rows.append((name, "0"))
    out = root / "data.csv"
    with out.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("filepath", "label"), *rows])
    return out


def _opened(job: JobSpec, run_dir: Path, events: list[ProgressEvent] | None = None) -> RunContext:
    run_dir.mkdir(exist_ok=True)
    sink: Callable[[ProgressEvent], None] = (
        events.append if events is not None else (lambda _event: None)
    )
    return open_run(job, run_dir, progress=sink, cache_dir=None)


# -- start --------------------------------------------------------------------------------------
def test_start_writes_a_pending_report_and_a_restart_reopens_it(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    job = _job(tiny_models["keras"], tiny_data, ("int8",))
    run = _opened(job, tmp_path / "run")
    on_disk = rundir.read_json(tmp_path / "run" / rundir.REPORT)
    # int8 plus the float32 pivot the split needs, both pending before any work.
    assert [(v["name"], v["status"]) for v in on_disk["variants"]] == [
        ("int8", "pending"),
        ("float32", "pending"),
    ]
    assert [s.name for s in run.pending()] == ["float32", "int8"]  # the pivot runs first
    on_disk["variants"][1]["status"] = "done"  # as a crashed worker's report would say
    rundir.write_json_atomic(tmp_path / "run" / rundir.REPORT, on_disk)
    again = _opened(job, tmp_path / "run")
    assert again.report.data["run"]["created"] == on_disk["run"]["created"]
    assert [s.name for s in again.pending()] == ["int8"]


def test_a_restarted_start_keeps_the_variants_auto_fix_added(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    """A derived variant --auto-fix wrote into report.json before a crash is part of the job
    after the restart: pending (so converted and evaluated) and among the specs (so timed)."""
    job = _job(tiny_models["keras"], tiny_data, ("int8",))
    _opened(job, tmp_path / "run")
    on_disk = rundir.read_json(tmp_path / "run" / rundir.REPORT)
    derived = {**on_disk["variants"][0], "name": "int8:keep=dense", "float_layers": ["dense"]}
    on_disk["variants"].append({**derived, "parent": "int8", "derived_by": "auto-fix"})
    for entry in on_disk["variants"][:2]:
        entry["status"] = "done"
    rundir.write_json_atomic(tmp_path / "run" / rundir.REPORT, on_disk)
    again = _opened(job, tmp_path / "run")
    assert [s.name for s in again.specs] == ["int8", "float32", "int8:keep=dense"]
    assert [s.name for s in again.pending()] == ["int8:keep=dense"]


# -- decode + reference -----------------------------------------------------------------------
def test_reference_writes_its_files_and_lists_undecodable_images(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    data = _with_broken_files(tiny_data, tmp_path / "data")
    job = _job(tiny_models["keras"], data)
    events: list[ProgressEvent] = []
    run = _opened(job, tmp_path / "run", events)
    out = run_reference(run)
    run_dir = tmp_path / "run"
    assert len(out.sample_indices) == 24 and out.labels.tolist() == [i // 6 for i in range(24)]
    # The decoded cache holds exactly the 24 good images, as uint8 pixels.
    assert (run_dir / DECODED_CACHE).stat().st_size == 24 * 16 * 16 * 3
    with (run_dir / rundir.SKIPPED).open(encoding="utf-8") as f:
        skipped = [row["relpath"] for row in csv.DictReader(f)]
    assert skipped == ["broken_a.png", "broken_b.png"]
    # Independently: the original on the same pixels, decoded here with Pillow, in [0, 1].
    with tiny_data.open(encoding="utf-8") as f:
        paths = [tiny_data.parent / r["filepath"] for r in csv.DictReader(f)]
    pixels = np.stack(
        [
            np.asarray(Image.open(p).convert("RGB").resize((16, 16), Image.Resampling.BILINEAR))
            for p in paths
        ]
    ).astype(np.float32) / np.float32(255.0)
    import keras

    expected = keras.models.load_model(tiny_models["keras"]).predict(pixels, verbose=0)
    np.testing.assert_allclose(np.load(run_dir / rundir.REFERENCE_PROBS), expected, atol=1e-5)
    assert out.calibration is not None and out.calibration.shape == (24, 16, 16, 3)
    steps = [e.step for e in events]
    assert steps.index("decode") < steps.index("reference")


def test_decoding_runs_one_batch_ahead_of_the_original(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the caller works on a decoded batch (the original's pass), the next batch is being
    decoded on a second thread; the batches and the cache are those of a one-by-one decode."""
    import threading

    from core.engine.stages import decode

    monkeypatch.setattr(decode, "BATCH", 4)
    serial = decode.decode_batch
    second_started = threading.Event()
    calls: list[list[int]] = []

    def spying(samples, **kwargs):  # type: ignore[no-untyped-def]
        calls.append([s.index for s in samples])
        if len(calls) == 2:
            second_started.set()
        return serial(samples, **kwargs)

    run = _opened(_job(tiny_models["keras"], tiny_data), tmp_path / "run")
    images = decode.DecodedImages(run)
    monkeypatch.setattr(decode, "decode_batch", spying)
    batches = images.batches()
    first = next(batches)
    assert second_started.wait(timeout=60), "the next batch waited for the caller"
    got = [first, *batches]
    height, width, channels = run.image_shape
    one_by_one = [
        serial(images.evaluated[i : i + 4], height=height, width=width, channels=channels)
        for i in range(0, len(images.evaluated), 4)
    ]
    assert [[s.index for s in b.samples] for b in got] == [
        [s.index for s in kept] for kept, _, _ in one_by_one
    ]
    expected = np.stack([image for _, decoded, _ in one_by_one for image in decoded])
    np.testing.assert_array_equal(np.concatenate([b.pixels for b in got]), expected)
    np.testing.assert_array_equal(images.cache.read(len(expected) - 1), expected[-1])


def test_a_restarted_reference_stage_reads_its_files_back(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    job = _job(tiny_models["keras"], tiny_data)
    first = run_reference(_opened(job, tmp_path / "run"))
    assert (tmp_path / "run" / DECODE_STATE).exists()
    events: list[ProgressEvent] = []
    again = run_reference(_opened(job, tmp_path / "run", events))
    assert not any(e.step in ("decode", "reference") for e in events)  # nothing ran again
    np.testing.assert_array_equal(again.prob_rows(0, len(again)), first.prob_rows(0, len(first)))
    assert again.softmax == first.softmax
    assert again.labels.tolist() == first.labels.tolist()
    assert again.sample_indices == first.sample_indices
    assert first.calibration is not None and again.calibration is not None
    np.testing.assert_array_equal(again.calibration, first.calibration)


class _Stopped(Exception):
    """Raised by a progress sink to stop a stage between two batches, like a crash."""


def test_a_reference_pass_stopped_after_one_batch_left_that_batch_and_restarts_clean(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The original's outputs are on disk batch by batch (never only in memory); a stage that
    did not finish is not taken for done, and its restart writes what an unbroken run does."""
    import keras

    monkeypatch.setattr("core.engine.stages.decode.BATCH", 8)
    job = _job(tiny_models["keras"], tiny_data)
    run_dir = tmp_path / "run"
    seen: list[str] = []

    def stop_at_second_batch(event: ProgressEvent) -> None:
        seen.append(event.step)
        if seen.count("reference") == 2:
            raise _Stopped

    run_dir.mkdir()
    with pytest.raises(_Stopped):
        run_reference(open_run(job, run_dir, progress=stop_at_second_batch, cache_dir=None))
    expected = keras.models.load_model(tiny_models["keras"]).predict(
        _unit_images(tiny_data), verbose=0
    )
    first_batch = np.fromfile(run_dir / REFERENCE_OUTPUTS, dtype=np.float32)
    first_batch = first_batch.reshape(-1, expected.shape[1])
    np.testing.assert_allclose(first_batch, expected[:8], atol=1e-5)
    assert not (run_dir / DECODE_STATE).exists()  # not done: a restart runs it again

    out = run_reference(_opened(job, run_dir))
    assert len(out) == 24
    np.testing.assert_allclose(np.load(run_dir / rundir.REFERENCE_PROBS), expected, atol=1e-5)
    with (run_dir / rundir.SAMPLES).open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["ref_top1"]) for r in rows] == expected.argmax(axis=1).tolist()


# -- evaluate: the local engine --------------------------------------------------------------
def test_local_evaluation_writes_what_the_interpreter_outputs(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    """The local engine's outcome and files hold the .tflite's own outputs, recomputed here
    with the bare interpreter one image at a time."""
    from ai_edge_litert.interpreter import Interpreter

    from core.engine.stages.convert import conversions_started

    job = _job(tiny_models["keras"], tiny_data, ("float16",))
    run = _opened(job, tmp_path / "run")
    reference = run_reference(run)
    statuses: list[str] = []

    def started(spec: VariantSpec) -> None:
        statuses.append(spec.name)

    with conversions_started(run, run.pending(), reference) as conversions:
        outcomes = list(evaluate_converted(run, reference, conversions, on_start=started))
    assert statuses == ["float32", "float16"]
    for outcome in outcomes:
        assert isinstance(outcome, EvaluatedVariant)
        name = outcome.spec.name
        interpreter = Interpreter(
            model_content=(tmp_path / "run" / f"{name}.tflite").read_bytes(), num_threads=1
        )
        interpreter.allocate_tensors()
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        rows = []
        for image in _unit_images(tiny_data):
            interpreter.set_tensor(inp["index"], image[None])
            interpreter.invoke()
            rows.append(interpreter.get_tensor(out["index"])[0].copy())
        written = np.load(tmp_path / "run" / f"{name}.probs.npy")
        np.testing.assert_allclose(written, np.stack(rows), rtol=0, atol=1e-5)


def test_quantizer_recipes_start_from_the_pivots_own_float32_conversion(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The float32 model is converted once per run, the pivot's conversion, and every
    quantizer recipe quantizes those bytes (no conversion cache here, which used to hide a
    float32 conversion per recipe)."""
    from core.engine import convert
    from core.engine.quantizer import quantize_float_tflite
    from core.engine.stages.convert import conversions_started

    made: list[str] = []
    real_convert_by = convert._convert_by

    def counting(model, spec, *args, **kwargs):  # type: ignore[no-untyped-def]
        made.append(spec.name)
        return real_convert_by(model, spec, *args, **kwargs)

    monkeypatch.setattr(convert, "_convert_by", counting)
    job = _job(tiny_models["keras"], tiny_data, ("float16_q", "dynamic_q"))
    run = _opened(job, tmp_path / "run")
    reference = run_reference(run)
    with conversions_started(run, run.pending(), reference) as conversions:
        outcomes = list(evaluate_converted(run, reference, conversions, on_start=lambda _: None))
    assert [o.spec.name for o in outcomes] == ["float32", "float16_q", "dynamic_q"]
    assert made == ["float32"]
    pivot = (tmp_path / "run" / "float32.tflite").read_bytes()
    for outcome in outcomes[1:]:
        assert isinstance(outcome, EvaluatedVariant)
        written = (tmp_path / "run" / f"{outcome.spec.name}.tflite").read_bytes()
        assert written == quantize_float_tflite(pivot, outcome.spec, None)


def _unit_images(csv_path: Path) -> np.ndarray:
    with csv_path.open(encoding="utf-8") as f:
        paths = [csv_path.parent / r["filepath"] for r in csv.DictReader(f)]
    pixels = [
        np.asarray(Image.open(p).convert("RGB").resize((16, 16), Image.Resampling.BILINEAR))
        for p in paths
    ]
    return np.stack(pixels).astype(np.float32) / np.float32(255.0)


# -- the driver ---------------------------------------------------------------------------------
def test_the_driver_runs_the_stages_in_order(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    events: list[ProgressEvent] = []
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_job(
        _job(tiny_models["keras"], tiny_data, ("float16",)),
        run_dir,
        progress=events.append,
        cache_dir=None,
    )
    # The main thread's steps (conversion events come from the other thread, interleaved).
    main: list[str] = []
    for event in events:
        if event.step != "convert" and (not main or main[-1] != event.step):
            main.append(event.step)
    first = {step: main.index(step) for step in dict.fromkeys(main)}
    order = ["load", "decode", "reference", "infer", "variant", "latency", "deploy", "done"]
    assert [s for s in order if s in first] == order
    assert sorted(first, key=first.__getitem__) == order
    assert main[-1] == "done"


def test_the_diagnose_stage_runs_between_evaluation_and_timing(tmp_path: Path) -> None:
    """Each finished int8 variant that flipped an image is diagnosed after evaluation and before
    timing; the float32 pivot, which has no per-layer statistics, is not. (The outlier model:
    int8 flips some of its images, where the tiny model's int8 flips none.)"""
    from tests.core.test_autofix import build_outlier_model
    from tests.core.test_selective import _write_images

    events: list[ProgressEvent] = []
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    model = build_outlier_model(tmp_path / "outlier")
    report = run_job(
        _job(model, _write_images(tmp_path / "data"), ("int8",)),
        run_dir,
        progress=events.append,
        cache_dir=None,
    )
    steps = [e.step for e in events if e.step != "convert"]
    last_variant = max(i for i, s in enumerate(steps) if s == "variant")
    diagnosed = [i for i, s in enumerate(steps) if s == "diagnose"]
    first_timing = steps.index("latency")
    assert diagnosed and last_variant < min(diagnosed) and max(diagnosed) < first_timing
    assert {e.variant for e in events if e.step == "diagnose"} == {"int8"}
    by_name = {v["name"]: v for v in report["variants"]}
    assert by_name["int8"]["diagnosis"]["table"] == "int8.layers.csv"
    assert (run_dir / "int8.layers.csv").is_file()
    assert report["diagnosis"] == {
        "int8": [s["layer"] for s in by_name["int8"]["diagnosis"]["suspects"]]
    }
    assert not (run_dir / "float32.layers.csv").exists()
