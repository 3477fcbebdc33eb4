"""The convert stage overlaps the original's pass (issue 11's speed target): the float32 pivot,
which every quantizer recipe starts from, converts while the original runs, and a calibrating
mode waits for the calibration set. Real tiny model, real converter and quantizer."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from core.engine.pipeline import run_job
from core.inputs import rundir
from core.types import JobSpec, Preset, ProgressEvent

pytestmark = pytest.mark.slow

# Generous: a tiny model converts in about a second, even on a loaded two-core machine.
CONVERSION_WAIT_S = 60.0


def _job(model: Path, data: Path, variants: tuple[str, ...]) -> JobSpec:
    return JobSpec(
        model_path=str(model),
        data_path=str(data),
        variants=variants,
        preset=Preset.UNIT,
        threads=1,
        latency_runs=2,
        warmup_runs=1,
    )


def test_the_pivot_converts_while_the_original_runs(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    """The main thread is held at its reference step until float32 has converted: that only
    ends in time if the conversion thread works during the original's pass. The int8 recipe,
    which calibrates, still converts after the pass."""
    converted = threading.Event()
    events: list[ProgressEvent] = []
    waits: list[bool] = []

    def progress(event: ProgressEvent) -> None:
        events.append(event)
        if event.step == "convert" and event.message.startswith("converted float32 "):
            converted.set()
        if event.step == "reference":  # the main thread, about to run the original
            waits.append(converted.wait(CONVERSION_WAIT_S))

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job = _job(tiny_models["saved_model"], tiny_data, ("float16_q", "int8_q"))
    report = run_job(job, run_dir, progress=progress, cache_dir=tmp_path / "cache")

    assert waits and all(waits), "float32 did not convert during the reference pass"
    steps = [(e.step, e.message) for e in events]
    last_reference = max(i for i, (step, _) in enumerate(steps) if step == "reference")
    int8_start = steps.index(("convert", "converting to int8_q"))
    assert int8_start > last_reference  # calibrating modes wait for the pass to end
    assert {v["name"]: v["status"] for v in report["variants"]} == {
        "float32": "done",
        "float16_q": "done",
        "int8_q": "done",
    }
    assert rundir.tflite_path(run_dir, rundir.FileId("int8_q")).exists()


def test_a_failed_reference_pass_releases_the_waiting_conversions(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    """No image decodes, so the pass fails before a probe exists: the run's error comes at once
    and no conversion thread stays blocked (it would hang the worker's exit)."""
    from core.errors import DatasetError

    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    for i in range(3):
        (root / "images" / f"{i}.png").write_text("not an image", encoding="utf-8")
    csv_path = root / "data.csv"
    csv_path.write_text(
        "filepath,label\n" + "".join(f"images/{i}.png,0\n" for i in range(3)), encoding="utf-8"
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job = _job(tiny_models["saved_model"], csv_path, ("float16",))
    with pytest.raises(DatasetError, match="none of the 3 images could be decoded"):
        run_job(job, run_dir, progress=lambda _event: None, cache_dir=None)
    deadline = time.monotonic() + 10
    while _conversion_threads() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _conversion_threads() == []


def _conversion_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("quantlens-convert")]
