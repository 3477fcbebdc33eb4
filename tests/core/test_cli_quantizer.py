"""`python -m core run --backend quantizer|both` end to end: what report.json says about each
variant is recomputed here from the written `.tflite` files with ai_edge_litert and numpy, and
the reference with TensorFlow, never with core.metrics.agreement."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.core.conftest import unlabelled_copy
from tests.core.test_cli import run_cli

pytestmark = pytest.mark.slow

SIZE = 16  # the tiny model's input: images are written at that size, so nothing is resized


@pytest.fixture(scope="module")
def images_at_model_size(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 class-coloured 16x16 PNGs and their CSV."""
    root = tmp_path_factory.mktemp("images16")
    rng = np.random.default_rng(7)
    rows = []
    for i in range(32):
        label = i % 4
        base = np.zeros((SIZE, SIZE, 3))
        base[..., label % 3] = 150 + 70 * (label // 3)
        pixels = np.clip(base + rng.normal(0, 50, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
        rows.append((f"{i}.png", label))
    with (root / "data.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "label"])
        writer.writerows(rows)
    return root / "data.csv"


def _inputs(csv_path: Path) -> np.ndarray:
    """The `unit` preset by its definition: RGB pixels / 255, in CSV order."""
    with csv_path.open() as f:
        paths = [csv_path.parent / row["filepath"] for row in csv.DictReader(f)]
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    return pixels.astype(np.float32) / np.float32(255.0)


def _reference_probs(saved_model: Path, images: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    serve = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    (output,) = serve(tf.constant(images)).values()
    return np.asarray(output, dtype=np.float64)


def _tflite_probs(tflite: Path, images: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite.read_bytes(), num_threads=1)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    rows = []
    for image in images:
        x = image[None].astype(np.float64)
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max)
        interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])[0].astype(np.float64)
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y - zero) * scale
        rows.append(y)
    return np.asarray(rows)


@pytest.fixture(scope="module")
def quantizer_run(
    tiny_models: dict[str, Path],
    images_at_model_size: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    home = tmp_path_factory.mktemp("home_q")
    out = home / "out"
    # Without labels: the tiny model is near chance on any labels, where nothing may PASS.
    data = unlabelled_copy(images_at_model_size, home / "data")
    done = run_cli(
        "run",
        str(tiny_models["saved_model"]),
        "--data",
        str(data),
        "--backend",
        "quantizer",
        "--modes",
        "float16,dynamic,int8,int4w",
        "--preprocess",
        "unit",
        "--min-agreement",
        "0",
        "--latency-runs",
        "3",
        "--threads",
        "1",
        "--out",
        str(out),
        home=home,
    )
    return done, out


def test_quantizer_run_reproduces_from_the_written_files(
    quantizer_run: tuple[subprocess.CompletedProcess[str], Path],
    tiny_models: dict[str, Path],
    images_at_model_size: Path,
) -> None:
    done, out = quantizer_run
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    names = [v["name"] for v in report["variants"]]
    # float32 joins as the pivot of the conversion/quantization split.
    assert names == ["float16_q", "dynamic_q", "int8_q", "int4w_q", "float32"]
    images = _inputs(images_at_model_size)
    ref = _reference_probs(tiny_models["saved_model"], images)
    ref_top1 = ref.argmax(axis=1)
    for variant in report["variants"]:
        name = variant["name"]
        assert variant["status"] == "done", variant["error"]
        pivot = name == "float32"  # the converter's float32, every quantizer variant's start
        assert variant["backend"] == ("converter" if pivot else "quantizer")
        assert variant["float_layers"] == []
        path = out / f"{name}.tflite"
        assert variant["size_bytes"] == path.stat().st_size
        assert variant["size_reduction_pct"] == pytest.approx(
            100 * (1 - path.stat().st_size / report["reference"]["size_bytes"])
        )
        tfl = _tflite_probs(path, images)
        agree = ref_top1 == tfl.argmax(axis=1)
        assert variant["n"] == len(images) == 32
        assert variant["top1_agreement_pct"] == pytest.approx(100 * agree.mean())
        assert variant["disagreements"] == int((~agree).sum())
        delta = np.abs(ref - tfl).max(axis=1)
        assert variant["max_abs_prob_delta"] == pytest.approx(delta.max(), abs=1e-5)
        with (out / f"{name}.samples.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert [int(r["agree"]) for r in rows] == agree.astype(int).tolist()
        np.testing.assert_allclose(
            [float(r["max_abs_delta"]) for r in rows], delta, rtol=1e-4, atol=1e-5
        )
        top1_delta = tfl[np.arange(len(ref)), ref_top1] - ref[np.arange(len(ref)), ref_top1]
        np.testing.assert_allclose(
            [float(r["top1_prob_delta"]) for r in rows], top1_delta, rtol=1e-4, atol=1e-5
        )
    # int4 weights make the smallest model.
    sizes = {v["name"]: v["size_bytes"] for v in report["variants"]}
    assert sizes["int4w_q"] == min(sizes.values())
    assert "int4w_q" in done.stdout and "float16_q" in done.stdout


def test_both_backends_side_by_side_with_overrides(
    tiny_models: dict[str, Path],
    images_at_model_size: Path,
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    done = run_cli(
        "run",
        str(tiny_models["saved_model"]),
        "--data",
        str(images_at_model_size),
        "--backend",
        "both",
        "--modes",
        "int8,int8:keep=dense,int8:keep=dens",
        "--preprocess",
        "unit",
        "--min-agreement",
        "0",
        "--latency-runs",
        "3",
        "--out",
        str(out),
        home=tmp_path,
    )
    # A variant that did not finish makes the exit status 1, never a crash.
    assert done.returncode == 1, done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    by_name = {v["name"]: v for v in report["variants"]}
    # The float32 pivot of the three-way split joins every run with a quantized variant.
    # int8 keeps layers in float on both backends (issue 12), so each override runs twice.
    assert list(by_name) == [
        "int8",
        "int8_q",
        "int8:keep=dense",
        "int8_q:keep=dense",
        "int8:keep=dens",
        "int8_q:keep=dens",
        "float32",
    ]
    assert by_name["float32"]["role"] == "pivot" and by_name["float32"]["passed"] is None
    assert by_name["int8"]["backend"] == "converter"
    assert by_name["int8_q"]["backend"] == "quantizer"
    assert by_name["int8"]["status"] == by_name["int8_q"]["status"] == "done"
    for parent in ("int8", "int8_q"):
        kept = by_name[f"{parent}:keep=dense"]
        assert kept["status"] == "done" and kept["float_layers"] == ["dense"]
        assert kept["parent"] == parent
        # Keeping a layer in float costs its float weights.
        assert kept["size_bytes"] > by_name[parent]["size_bytes"]
        assert (out / f"{kept['file_id']}.tflite").stat().st_size == kept["size_bytes"]
        failed = by_name[f"{parent}:keep=dens"]
        assert failed["status"] == "failed"
        assert "\n" not in failed["error"]
        assert "no op of the converted model comes from a layer named 'dens'" in failed["error"]
        assert failed["error"].split("nearest layer names: ")[1].startswith("dense")
    table = done.stdout.splitlines()
    assert any(line.startswith("int8 ") for line in table)
    assert any(line.startswith("int8_q ") for line in table)
    # The command that reproduces the run names each variant as it ran.
    assert (
        "--modes int8,int8_q,int8:keep=dense,int8_q:keep=dense,int8:keep=dens,int8_q:keep=dens"
        in report["run"]["command"]
    )
