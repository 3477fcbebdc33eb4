"""Per-layer diagnosis (issue 12): both backends' statistics land on the tiny model's Keras layer
names, the numbers are checked against the `.tflite` files themselves (tensor scales read from
the flatbuffer; the output's error recomputed with ai_edge_litert and numpy), and a run writes
`<variant>.layers.csv` and the `diagnosis` summary."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.engine.backends import tflite_from_reference
from core.engine.diagnose import MAX_IMAGES, OUTPUT_LAYER, diagnose_variant
from core.engine.models import ReferenceModel, load_reference, model_sha256
from core.types import VariantSpec
from tests.core.conftest import unlabelled_copy
from tests.core.test_cli import run_cli

pytestmark = pytest.mark.slow  # real conversions, the debugger and the quantizer

# The tiny model's layers that own an op, in graph order (conftest.build_tiny_model; the batch
# norms and ReLUs fold into the op before them).
TINY_LAYERS = ["conv2d", "depthwise_conv2d", "conv2d_1", "global_average_pooling2d", "dense"]


@pytest.fixture(scope="module")
def tiny_ref(tiny_models: dict[str, Path]) -> ReferenceModel:
    return load_reference(tiny_models["keras"])


@pytest.fixture(scope="module")
def images(tiny_data: Path) -> np.ndarray:
    from core.inputs.datasets import load_dataset
    from core.inputs.images import decode_image
    from core.inputs.presets import apply_preset
    from core.types import Preset

    samples = load_dataset(tiny_data).samples
    pixels = np.stack([decode_image(s.path, height=16, width=16, channels=3) for s in samples])
    return apply_preset(pixels, Preset.MOBILENET_V2).astype(np.float32)


def _convert(model: ReferenceModel, path: Path, variant: str, calibration: Any) -> Any:
    return tflite_from_reference(
        model, VariantSpec.parse(variant), model_sha256=model_sha256(path), calibration=calibration
    )


def _diagnose(
    tiny_ref: ReferenceModel, path: Path, variant: str, images: np.ndarray, out: Path
) -> tuple[dict[str, Any], list[dict[str, str]], bytes]:
    result = _convert(tiny_ref, path, variant, images)
    float_tflite = _convert(tiny_ref, path, "float32", None).tflite
    events: list[tuple[float, str]] = []
    summary = diagnose_variant(
        tiny_ref,
        VariantSpec.parse(variant),
        result.tflite,
        float_tflite=float_tflite,
        route=result.route,
        calibration=images,
        flipped=images[:5],
        out_csv=out,
        progress=lambda f, m: events.append((f, m)),
    )
    assert events and all(0.0 <= f <= 1.0 for f, _ in events)
    with out.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return summary, rows, result.tflite


def _tensor_params(tflite: bytes) -> dict[str, tuple[float, int]]:
    """Tensor name -> (scale, zero point), read with the LiteRT interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite)
    found = {}
    for d in interpreter.get_tensor_details():
        scales = d["quantization_parameters"]["scales"]
        if len(scales) == 1:
            found[d["name"]] = (
                float(scales[0]),
                int(d["quantization_parameters"]["zero_points"][0]),
            )
    return found


def test_converter_statistics_name_the_keras_layers(
    tiny_ref: ReferenceModel, tiny_models: dict[str, Path], images: np.ndarray, tmp_path: Path
) -> None:
    summary, rows, tflite = _diagnose(
        tiny_ref, tiny_models["keras"], "int8", images, tmp_path / "int8.layers.csv"
    )
    layers = [r["layer"] for r in rows]
    assert layers[: len(TINY_LAYERS)] == TINY_LAYERS
    assert layers[-2:] == ["scores", OUTPUT_LAYER]  # the softmax row has no Keras scope
    assert [r["op"] for r in rows][:3] == ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D"]
    # The raw tensor name is kept, and the fused layers are listed.
    # (the model's own scope is functional_1, or functional_1_1 when the session built two)
    assert "/re_lu_1/Relu6;" in rows[0]["tensor_name"]
    assert rows[0]["tensor_name"].endswith("/conv2d_1/convolution")
    assert rows[0]["layers"] == "re_lu+conv2d"
    assert rows[1]["shape"] == "1x16x16x24"
    # Each row's scale and zero point are those of that tensor in the variant's own model.
    params = _tensor_params(tflite)
    for row in rows:
        if row["tensor_name"] in params:
            scale, zero = params[row["tensor_name"]]
            assert float(row["scale"]) == pytest.approx(scale, rel=1e-6)
            assert int(row["zero_point"]) == zero
    # Both image sets were measured; every error is finite and non-negative where it must be.
    for row in rows:
        for column in ("rmse_per_scale", "flipped_rmse_per_scale", "max_abs_error"):
            assert math.isfinite(float(row[column])) and float(row[column]) >= 0
        assert row["cosine"] == ""  # the debugger has no cosine: never a made-up number
    assert summary["calibration_images"] == min(len(images), MAX_IMAGES)
    assert summary["flipped_images"] == 5
    assert summary["ranked_by"] == "rmse/scale"
    ranked = [s["flipped"]["rmse_per_scale"] for s in summary["suspects"]]
    assert ranked == sorted(ranked, reverse=True)
    worst = max(rows, key=lambda r: float(r["flipped_rmse_per_scale"]))
    assert summary["suspects"][0]["layer"] == worst["layer"]


def test_quantizer_statistics_match_an_independent_recomputation(
    tiny_ref: ReferenceModel, tiny_models: dict[str, Path], images: np.ndarray, tmp_path: Path
) -> None:
    from ai_edge_litert.interpreter import Interpreter

    summary, rows, tflite = _diagnose(
        tiny_ref, tiny_models["keras"], "int8_q", images, tmp_path / "int8_q.layers.csv"
    )
    assert [r["layer"] for r in rows][: len(TINY_LAYERS)] == TINY_LAYERS
    assert all(0.9 < float(r["cosine"]) <= 1.0 + 1e-6 for r in rows)
    # The model output's rmse/scale, recomputed: the float and the int8 model on the same
    # images, the int8 output dequantized with its own parameters.
    float_tflite = _convert(tiny_ref, tiny_models["keras"], "float32", None).tflite

    def outputs(model: bytes) -> tuple[np.ndarray, dict[str, Any]]:
        interpreter = Interpreter(model_content=model)
        interpreter.allocate_tensors()
        inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
        ys = []
        for image in images[:MAX_IMAGES]:
            x = image[None]
            if inp["dtype"] != np.float32:
                # As the run's evaluation quantizes its inputs (TFLite's Quantize kernel,
                # std::round: half away from zero); these images sit on exact halves.
                s, z = inp["quantization"]
                scaled = x.astype(np.float64) / s
                x = np.clip(np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) + z, -128, 127)
            interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
            interpreter.invoke()
            ys.append(interpreter.get_tensor(out["index"])[0].astype(np.float64))
        return np.asarray(ys), out

    expected_float, _ = outputs(float_tflite)
    quantized, out = outputs(tflite)
    scale, zero = out["quantization"]
    dequantized = (quantized - zero) * scale
    rmse = math.sqrt(np.mean(np.mean((dequantized - expected_float) ** 2, axis=1)))
    output_row = next(r for r in rows if r["layer"] == OUTPUT_LAYER)
    assert float(output_row["scale"]) == pytest.approx(scale, rel=1e-6)
    assert float(output_row["rmse_per_scale"]) == pytest.approx(rmse / scale, rel=1e-3)
    assert summary["source"].startswith("LiteRT Quantizer")


@pytest.mark.parametrize("variant", ["int8_q", "float16_q", "dynamic_q", "int16x8_q"])
def test_the_tensor_comparison_equals_the_quantizers_own_compare_model(
    tiny_ref: ReferenceModel, tiny_models: dict[str, Path], images: np.ndarray, variant: str
) -> None:
    """tensor_comparison is compare_model's statistics computed in one pass per model: the
    library's own function, run here, is the oracle, on every op output of every recipe."""
    import contextlib
    import sys

    from litert_quantizer import model_validator
    from litert_quantizer.utils.validation_utils import ValidationErrorMetric

    from core.engine.diagnose import _float_ops, tensor_comparison

    path = tiny_models["keras"]
    float_tflite = _convert(tiny_ref, path, "float32", None).tflite
    tflite = _convert(tiny_ref, path, variant, images).tflite
    names = [name for _, name, _ in _float_ops(float_tflite)]
    # Random inputs: compare_model rounds an integer input half to even, the run's evaluation
    # (and so tensor_comparison) half away from zero; they differ only on exact halves, where
    # the preprocessed digit images sit.
    subset = np.random.default_rng(3).uniform(-1, 1, size=(7, *images.shape[1:]))
    subset = subset.astype(np.float32)
    ours = tensor_comparison(float_tflite, tflite, subset, names)

    from ai_edge_litert.interpreter import Interpreter

    key, io_names = next(iter(Interpreter(model_content=float_tflite).get_signature_list().items()))
    (input_name,) = io_names["inputs"]
    data = {key: [{input_name: subset[i : i + 1]} for i in range(len(subset))]}
    with contextlib.redirect_stdout(sys.stderr):
        library = model_validator.compare_model(
            float_tflite,
            tflite,
            data,
            [ValidationErrorMetric.MSE, ValidationErrorMetric.COSINE_SIMILARITY],
            num_threads=1,
        ).get_all_tensor_results()
    expected = {name: library[name] for name in names if name in library}
    assert set(ours) == set(expected) and len(ours) >= len(TINY_LAYERS)
    for name, stats in expected.items():
        assert ours[name]["mse"] == pytest.approx(stats["mse"], rel=1e-5, abs=1e-12), name
        assert ours[name]["cosine_similarity"] == pytest.approx(
            stats["cosine_similarity"], abs=1e-6
        ), name
    if variant != "float16_q":  # float16 weights: some tensors are exact, others are not
        assert any(stats["mse"] > 0 for stats in ours.values())


def test_a_run_writes_the_layer_table_and_the_summary(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    data = unlabelled_copy(tiny_data, tmp_path / "data")
    done = run_cli(
        "run",
        str(tiny_models["saved_model"]),
        "--data",
        str(data),
        "--modes",
        "float16,int8",
        "--min-agreement",
        "0",
        "--latency-runs",
        "3",
        "--out",
        str(out),
        home=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    by_name = {v["name"]: v for v in report["variants"]}
    diagnosis = by_name["int8"]["diagnosis"]
    assert diagnosis["table"] == "int8.layers.csv"
    table = list(csv.DictReader(io.StringIO((out / "int8.layers.csv").read_text())))
    assert {s["layer"] for s in diagnosis["suspects"]} <= {r["layer"] for r in table}
    assert report["diagnosis"]["int8"] == [s["layer"] for s in diagnosis["suspects"]]
    # The flipped images are the variant's own disagreements, bounded by MAX_IMAGES.
    assert diagnosis["flipped_images"] == min(by_name["int8"]["disagreements"], MAX_IMAGES)
    # float16 on the converter has no per-layer statistics, and no file pretends otherwise.
    assert by_name["float16"].get("diagnosis") is None  # never diagnosed: no key
    assert not (out / "float16.layers.csv").exists()
    assert not (out / "float32.layers.csv").exists()


def test_quantizer_variants_diagnosed_side_by_side_each_get_their_own_table(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    """Three quantizer variants are diagnosed on two threads: each table is its own variant's,
    equal to the comparison run here on its `.tflite` and the calibration images the run
    lists, one variant at a time. Those that flipped no image are diagnosed when `export`
    asks (two at a time too, in the re-opened run)."""
    from core.engine.diagnose import _float_ops, tensor_comparison
    from core.inputs.images import decode_image
    from core.inputs.presets import apply_preset
    from core.types import Preset

    out = tmp_path / "out"
    data = unlabelled_copy(tiny_data, tmp_path / "data")
    done = run_cli(
        "run", str(tiny_models["saved_model"]), "--data", str(data), "--backend", "quantizer",
        "--modes", "float16,dynamic,int8", "--calibration-overlap", "--min-agreement", "0",
        "--threads", "2",  # two diagnoses at a time
        "--latency-runs", "3", "--out", str(out), home=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    exported = run_cli("export", str(out), home=tmp_path)
    assert exported.returncode == 0, exported.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    with (out / "calibration.csv").open(encoding="utf-8") as f:
        listed = [data.parent / r["relpath"] for r in csv.DictReader(f)]
    pixels = np.stack([decode_image(p, height=16, width=16, channels=3) for p in listed])
    calibration = apply_preset(pixels, Preset(report["preprocessing"]["preset"]))[:MAX_IMAGES]
    float_tflite = (out / "float32.tflite").read_bytes()
    names = [name for _, name, _ in _float_ops(float_tflite)]
    tables = {}
    for variant in ("float16_q", "dynamic_q", "int8_q"):
        with (out / f"{variant}.layers.csv").open(encoding="utf-8") as f:
            tables[variant] = {r["tensor_name"]: r for r in csv.DictReader(f)}
        tflite = (out / f"{variant}.tflite").read_bytes()
        expected = tensor_comparison(float_tflite, tflite, calibration.astype(np.float32), names)
        assert set(tables[variant]) == set(expected), variant
        for name, stats in expected.items():
            cosine = float(tables[variant][name]["cosine"])
            assert cosine == pytest.approx(stats["cosine_similarity"], rel=1e-6), (variant, name)
    assert tables["int8_q"] != tables["float16_q"] != tables["dynamic_q"]
