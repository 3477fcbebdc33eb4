"""Calibration kept apart from evaluation, and the calibration sweep, through the real CLI on the
tiny model: asserted from the files the run wrote, and one sweep point re-evaluated here with
its own interpreter loop against the original run in Keras."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.core.conftest import unlabelled_copy, write_tiny_images
from tests.core.test_cli import run_cli

pytestmark = pytest.mark.slow

COMMON = ("--modes", "int8", "--preprocess", "unit", "--threads", "1", "--latency-runs", "2")
COMMON += ("--min-agreement", "0", "--calibration-samples", "8")


def _relpaths(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as f:
        return [row["relpath"] for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def data(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny images unlabelled: the random tiny model is near chance on any labels, and such
    a run exits 1 (no PASS); these tests are about which images calibrate."""
    return unlabelled_copy(tiny_data, tmp_path_factory.mktemp("calib_data"))


@pytest.fixture(scope="module")
def swept_run(
    tiny_models: dict[str, Path], data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """24 images, 8 calibrating: held out; a sweep over 4 and 8 images with 2 seeds."""
    home = tmp_path_factory.mktemp("calib_home")
    out = home / "swept"
    done = run_cli(
        "run", str(tiny_models["keras"]), "--data", str(data), *COMMON,
        "--calibration-sweep", "4,8", "--sweep-seeds", "2", "--out", str(out), home=home,
    )  # fmt: skip
    return done, out


def test_held_out_calibration_images_are_never_evaluated(
    swept_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    done, out = swept_run
    assert done.returncode == 0, done.stderr
    evaluated = _relpaths(out / "samples.csv")
    calibrated = _relpaths(out / "calibration.csv")
    assert len(calibrated) == 8 and len(evaluated) == 16
    assert set(calibrated).isdisjoint(evaluated)
    assert len(set(calibrated) | set(evaluated)) == 24  # nothing else was left out
    report = json.loads((out / "report.json").read_text())
    calibration = report["calibration"]
    assert calibration["source"] == "held-out"
    assert (calibration["images"], calibration["held_out"], calibration["evaluable"]) == (8, 8, 16)
    assert report["dataset"]["num_samples"] == 16
    assert "--calibration-sweep 4,8 --sweep-seeds 2" in report["run"]["command"]


def test_the_sweep_writes_every_point_and_one_reproduces_independently(
    swept_run: tuple[subprocess.CompletedProcess[str], Path], tiny_models: dict[str, Path],
    data: Path,
) -> None:  # fmt: skip
    _, out = swept_run
    sweep = json.loads((out / "report.json").read_text())["sweep"]
    int8 = sweep["modes"]["int8"]
    assert [(p["size"], p["seed"]) for p in int8["points"]] == [(4, 1), (4, 2), (8, 1), (8, 2)]
    for point in int8["points"]:
        assert (out / point["file"]).read_bytes()[4:8] == b"TFL3" and point["n"] == 16
    assert sweep["modes"]["int16x8"].get("error") or len(sweep["modes"]["int16x8"]["points"]) == 4
    assert int8["flattens_at"] in (4, 8) and sweep["statement"]
    # Sweep points are not variants.
    report = json.loads((out / "report.json").read_text())
    assert [v["name"] for v in report["variants"]] == ["int8", "float32"]

    point = int8["points"][-1]
    assert point["agreement_pct"] == pytest.approx(
        _agreement_recomputed(out, point["file"], tiny_models["keras"], data)
    )


def _agreement_recomputed(out: Path, point_file: str, model: Path, data: Path) -> float:
    """A sweep point's agreement without QuantLens: the original in Keras and the point's model
    in our own interpreter loop, on the evaluated images as samples.csv lists them, decoded
    here with Pillow."""
    import keras
    from ai_edge_litert.interpreter import Interpreter

    pixels = np.stack(
        [
            np.asarray(
                Image.open(data.parent / rel)
                .convert("RGB")
                .resize((16, 16), Image.Resampling.BILINEAR)
            )
            for rel in _relpaths(out / "samples.csv")
        ]
    ).astype(np.float32) / np.float32(255.0)
    original = keras.models.load_model(model).predict(pixels, verbose=0)
    interpreter = Interpreter(model_content=(out / point_file).read_bytes())
    interpreter.allocate_tensors()
    inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero = inp["quantization"]
    top1 = []
    for image in pixels:
        # Half away from zero, as TFLite's Quantize kernel rounds (np.round rounds half to even).
        scaled = image.astype(np.float64) / scale
        rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
        q = np.clip(rounded + zero, -128, 127).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], q[None])
        interpreter.invoke()
        top1.append(int(np.argmax(interpreter.get_tensor(outp["index"])[0])))
    return float(100.0 * np.mean(np.asarray(top1) == original.argmax(axis=1)))


@pytest.fixture(scope="module")
def swept_on_ray(
    ray_address: str,
    tiny_models: dict[str, Path],
    data: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """The swept run's command on --engine ray, joining the session's Ray."""
    home = tmp_path_factory.mktemp("calib_ray_home")
    out = home / "swept-ray"
    done = run_cli(
        "run", str(tiny_models["keras"]), "--data", str(data), *COMMON,
        "--calibration-sweep", "4,8", "--sweep-seeds", "2",
        "--engine", "ray", "--ray-address", ray_address, "--out", str(out), home=home,
    )  # fmt: skip
    return done, out


def test_the_sweep_on_ray_gives_the_local_engines_points_and_files(
    swept_run: tuple[subprocess.CompletedProcess[str], Path],
    swept_on_ray: tuple[subprocess.CompletedProcess[str], Path],
    tiny_models: dict[str, Path],
    data: Path,
) -> None:
    """Points quantized as Ray tasks and evaluated in one cluster pass: every point's numbers
    and `.tflite` are the local engine's, and one reproduces independently."""
    done, on_ray = swept_on_ray
    assert done.returncode == 0, done.stderr[-3000:]
    local = swept_run[1]
    sweeps = [json.loads((d / "report.json").read_text())["sweep"] for d in (local, on_ray)]
    for key in ("sizes", "seeds", "pool_source", "pool_images", "evaluated_n", "notes"):
        assert sweeps[1][key] == sweeps[0][key], key
    assert sweeps[1]["evaluated_n"] == 16
    for mode, expected in sweeps[0]["modes"].items():
        got = sweeps[1]["modes"][mode]
        assert got.get("error") == expected.get("error")
        assert len(got["points"]) == len(expected["points"])
        for point, want in zip(got["points"], expected["points"], strict=True):
            for key in ("size", "seed", "agreement_pct", "n", "size_bytes", "file"):
                assert point[key] == want[key], (mode, key, point, want)
            assert point["mean_kl"] == pytest.approx(want["mean_kl"], abs=1e-6)
            assert point["ci95"] == pytest.approx(want["ci95"])
            assert (on_ray / point["file"]).read_bytes() == (local / point["file"]).read_bytes()
    assert len(sweeps[1]["modes"]["int8"]["points"]) == 4
    report = json.loads((on_ray / "report.json").read_text())
    assert report["engine"]["name"] == "ray"
    assert not any("sweep" in w for w in report["warnings"]), report["warnings"]
    messages = [
        json.loads(line)["message"]
        for line in (on_ray / "progress.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    points = 4 + len(sweeps[1]["modes"]["int16x8"]["points"])
    assert "sweep int8 n=4 seed 1 (1/8)" in messages
    assert f"sweep: evaluating {points} points on Ray (16/16 images)" in messages
    # One point, recomputed without QuantLens.
    point = sweeps[1]["modes"]["int8"]["points"][0]
    assert point["agreement_pct"] == pytest.approx(
        _agreement_recomputed(on_ray, point["file"], tiny_models["keras"], data)
    )


def test_a_separate_calibration_set_is_used_and_changes_int8(
    swept_run: tuple[subprocess.CompletedProcess[str], Path],
    tiny_models: dict[str, Path],
    data: Path,
    tmp_path: Path,
) -> None:
    _, held_out = swept_run
    other = write_tiny_images(tmp_path / "calset", per_class=3, seed=7)
    out = tmp_path / "separate"
    done = run_cli(
        "run", str(tiny_models["keras"]), "--data", str(data), *COMMON,
        "--calibration-data", str(other), "--out", str(out), home=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["calibration"]["source"] == "separate"
    assert report["calibration"]["path"] == str(other.resolve())
    assert report["calibration"]["images"] == 8 and report["dataset"]["num_samples"] == 24
    with other.open(encoding="utf-8") as f:
        listed = {row["filepath"] for row in csv.DictReader(f)}
    assert set(_relpaths(out / "calibration.csv")) <= listed
    assert "--calibration-data" in report["run"]["command"]
    # Other calibration images, other int8 ranges: the model bytes differ.
    assert (out / "int8.tflite").read_bytes() != (held_out / "int8.tflite").read_bytes()


def test_cancelling_the_sweep_keeps_the_runs_finished_results(
    tiny_models: dict[str, Path], data: Path, tmp_path: Path
) -> None:
    """Ctrl-C while a sweep point is being made: the run is cancelled, every variant it had
    finished stays done with its numbers, and the sweep has no point it did not finish."""
    import os
    import signal
    import sys
    import time

    from tests.core.test_cli import REPO, _default_sigint, _read

    out = tmp_path / "out"
    env = {**os.environ, "QUANTLENS_HOME": str(tmp_path), "QUANTLENS_FAULT": "hang@sweep"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "core", "run", str(tiny_models["keras"]), "--data", str(data),
         *COMMON, "--calibration-sweep", "4", "--sweep-seeds", "1", "--out", str(out)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_sigint,
    )  # fmt: skip
    try:
        deadline = time.time() + 300
        while time.time() < deadline and b"sweep int8 n=4 seed 1 (1/2)" not in _read(
            out / "progress.jsonl"
        ):
            time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["status"] == "cancelled"
    for variant in report["variants"]:
        assert variant["status"] == "done" and variant["n"] == 16
        assert variant["latency_ms"] is not None  # timed before the sweep began
    assert report["sweep"]["modes"]["int8"]["points"] == []


def test_the_ray_stage_holds_the_calibration_images_out_too(
    ray_connected: str, tiny_models: dict[str, Path], data: Path, tmp_path: Path
) -> None:
    """--engine ray draws the evaluated images through the same plan: disjoint from the
    calibration images its head decodes, asserted from the files."""
    from core.engine.stages.ray_evaluate import evaluate_on_ray
    from core.engine.stages.start import open_run
    from core.types import JobSpec, Preset

    job = JobSpec(
        model_path=str(tiny_models["saved_model"]),
        data_path=str(data),
        variants=("int8",),
        preset=Preset.UNIT,
        calibration_samples=8,
        threads=1,
        engine="ray",
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    evaluate_on_ray(open_run(job, run_dir, progress=lambda _event: None, cache_dir=None))
    evaluated = _relpaths(run_dir / "samples.csv")
    calibrated = _relpaths(run_dir / "calibration.csv")
    assert (len(evaluated), len(calibrated)) == (16, 8)
    assert set(evaluated).isdisjoint(calibrated)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["calibration"]["source"] == "held-out"
    assert {v["name"]: v["n"] for v in report["variants"]} == {"int8": 16, "float32": 16}


def test_mlflow_logs_where_calibration_came_from_and_the_sweep_against_size(
    swept_run: tuple[subprocess.CompletedProcess[str], Path], tmp_path: Path
) -> None:
    """The calibration source and the images used are MLflow params (a requested 100 on a
    small set used fewer), and each swept mode's mean agreement and KL are metric histories
    with the calibration size as the step, read back with MLflow's own client."""
    import shutil

    from mlflow.tracking import MlflowClient

    from core.reporting.tracking import log_finished_run

    _, out = swept_run
    run_dir = tmp_path / "run"
    shutil.copytree(out, run_dir)  # logging writes `tracking` into the report
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    logged = log_finished_run(run_dir, uri)
    assert logged["error"] is None
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(logged["run_id"])
    params = parent.data.params
    assert (params["calibration_source"], params["calibration_images"]) == ("held-out", "8")
    assert (params["calibration_held_out"], params["calibration_data"]) == ("8", "-")
    assert (params["calibration_sweep"], params["sweep_seeds"]) == ("4,8", "2")
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    int8 = next(c for c in children if c.data.tags["quantlens.variant"] == "int8")
    assert int8.data.params["calibration_source"] == "held-out"
    assert int8.data.params["calibration_images"] == "8"
    points = json.loads((out / "report.json").read_text())["sweep"]["modes"]["int8"]["points"]
    for key, column in (
        ("sweep_int8_agreement_pct", "agreement_pct"),
        ("sweep_int8_mean_kl", "mean_kl"),
    ):
        history = sorted(
            (m.step, m.value) for m in client.get_metric_history(parent.info.run_id, key)
        )
        expected = [
            (size, float(np.mean([p[column] for p in points if p["size"] == size])))
            for size in (4, 8)
        ]
        assert [step for step, _ in history] == [4, 8]
        assert [value for _, value in history] == pytest.approx([v for _, v in expected])


@pytest.mark.slow
def test_seeds_draw_different_images_at_the_largest_size_below_the_calibration_count(
    tiny_models: dict[str, Path], data: Path, tmp_path: Path
) -> None:
    """A sweep of 4 with 8 calibration images: each seed draws 4 of the 8, so the two seeds'
    models differ (the pool was once only as large as the largest size: every seed drew it
    all, and the largest size never showed a spread)."""
    out = tmp_path / "out"
    done = run_cli(
        "run", str(tiny_models["keras"]), "--data", str(data), *COMMON,
        "--calibration-sweep", "4", "--sweep-seeds", "2", "--out", str(out), home=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    sweep = json.loads((out / "report.json").read_text())["sweep"]
    assert sweep["pool_images"] == 8
    assert not any("every seed draws the whole pool" in note for note in sweep["notes"])
    first, second = (out / "sweep" / f"int8-n4-s{seed}.tflite" for seed in (1, 2))
    assert first.read_bytes() != second.read_bytes()
