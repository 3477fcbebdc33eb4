"""Details of one layer (issue 12 item 5): a run's `<variant>.layer_details.json` holds each op's
weight range and the float/quantized activation histograms on the flipped images. Checked
against the SavedModel's own variables and a TensorFlow recomputation of the op, not against
the LiteRT code that wrote them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.core.test_autofix import build_outlier_model
from tests.core.test_cli import run_cli
from tests.core.test_cli_quantizer import _inputs, _reference_probs, _tflite_probs
from tests.core.test_selective import _write_images


@pytest.mark.slow
def test_a_run_writes_weight_ranges_and_activation_histograms(tmp_path: Path) -> None:
    import tensorflow as tf

    model = build_outlier_model(tmp_path / "outlier")
    data = _write_images(tmp_path / "data")
    out = tmp_path / "out"
    run_cli(
        "run", str(model), "--data", str(data), "--modes", "int8", "--preprocess", "unit",
        "--latency-runs", "3", "--out", str(out), home=tmp_path,
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    int8 = next(v for v in report["variants"] if v["name"] == "int8")
    assert int8["diagnosis"]["details"] == "int8.layer_details.json"
    details = json.loads((out / "int8.layer_details.json").read_text())
    with (out / "int8.layers.csv").open() as f:
        table = {r["layer"]: r for r in csv.DictReader(f)}
    # Measured on the images int8 flipped, recomputed here with TF and LiteRT.
    images = _inputs(data)
    ref = _reference_probs(model, images).argmax(axis=1)
    flipped = images[ref != _tflite_probs(out / "int8.tflite", images).argmax(axis=1)]
    assert details["images"] == "flipped" and details["n_images"] == len(flipped) > 0
    wide = details["ops"][table["wide"]["order"]]
    variables = {v.name: v.numpy() for v in tf.saved_model.load(str(model)).variables}
    kernel, bias = variables["wide/kernel:0"], variables["wide/bias:0"]
    # int8 weights are per-channel: each is within half a step (|channel max| / 127) of float.
    step = float(np.abs(kernel).max()) / 127
    assert wide["weight_min"] == pytest.approx(float(kernel.min()), abs=step)
    assert wide["weight_max"] == pytest.approx(float(kernel.max()), abs=step)
    assert details["ops"][table["pool"]["order"]]["weight_min"] is None  # a mean has no weights
    # The float activations: the conv and its ReLU in TensorFlow, on the same bins.
    hist = wide["histogram"]
    activations = tf.nn.relu(tf.nn.conv2d(flipped, kernel, 1, "SAME") + bias).numpy()
    assert hist["values"] == activations.size == len(flipped) * 16 * 16 * 8
    expected = np.histogram(activations, bins=np.asarray(hist["edges"]))[0]
    assert sum(hist["float"]) == activations.size
    assert np.abs(np.asarray(hist["float"]) - expected).sum() <= 0.005 * activations.size
    # The quantized activations: every value is one of the op's int8 levels (q - zp) * scale.
    assert sum(hist["quantized"]) == activations.size
    scale, zero = float(table["wide"]["scale"]), int(table["wide"]["zero_point"])
    levels = (np.arange(-128, 128) - zero) * scale
    edges = hist["edges"]
    for i, count in enumerate(hist["quantized"]):
        if count:
            low, high = edges[i] - 1e-6 * scale, edges[i + 1] + 1e-6 * scale
            assert ((levels >= low) & (levels <= high)).any(), (i, edges[i], edges[i + 1])
    # Quantization visibly coarsens this layer: the two histograms differ.
    assert hist["float"] != hist["quantized"]


@pytest.mark.slow
def test_a_large_tensor_is_sampled_and_its_histogram_keeps_its_shape(
    tiny_models: dict[str, Path], tiny_data: Path
) -> None:
    """Past max_values an op's activations are sampled (a 224x224 MobileNetV2 has millions per
    image): the counts cover the sample, say how many values there were, and still match the
    whole tensor's distribution, recomputed here with ai_edge_litert on every value."""
    from ai_edge_litert.interpreter import Interpreter

    from core.engine.backends import tflite_from_reference
    from core.engine.diagnose import _float_ops
    from core.engine.layer_details import layer_details
    from core.engine.models import load_reference, model_sha256
    from core.inputs.datasets import load_dataset
    from core.inputs.images import decode_image
    from core.inputs.presets import apply_preset
    from core.types import Preset, VariantSpec

    path = tiny_models["keras"]
    model = load_reference(path)
    samples = load_dataset(tiny_data).samples
    pixels = np.stack([decode_image(s.path, height=16, width=16, channels=3) for s in samples])
    images = apply_preset(pixels, Preset.MOBILENET_V2).astype(np.float32)

    def convert(variant: str) -> bytes:
        spec = VariantSpec.parse(variant)
        sha = model_sha256(path)
        return tflite_from_reference(model, spec, model_sha256=sha, calibration=images).tflite

    float_tflite, int8 = convert("float32"), convert("int8_q")
    first_conv = _float_ops(float_tflite)[0][1]  # 16 x 16 x 24 = 6,144 values per image
    details = layer_details(
        float_tflite, int8, [(0, first_conv)], images, images_are="calibration", max_values=2400
    )
    hist = details["ops"]["0"]["histogram"]
    per_image = 2400 // len(images)
    assert hist["values"] == per_image * len(images) < 6144 * len(images)
    assert hist["tensor_values"] == 6144 * len(images)
    assert sum(hist["float"]) == sum(hist["quantized"]) == hist["values"]

    interpreter = Interpreter(model_content=float_tflite, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    index = next(d["index"] for d in interpreter.get_tensor_details() if d["name"] == first_conv)
    every = []
    for image in images:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
        interpreter.invoke()
        every.append(interpreter.get_tensor(index).ravel())
    whole = np.histogram(np.concatenate(every), bins=np.asarray(hist["edges"]))[0]
    sampled = np.asarray(hist["float"]) / hist["values"]
    variation = 0.5 * np.abs(sampled - whole / whole.sum()).sum()
    assert variation < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["float16", "float16_q"])
def test_float16_weights_are_found_behind_their_dequantize_op(
    tiny_models: dict[str, Path], variant: str
) -> None:
    """float16 kernels feed their conv through a DEQUANTIZE op, not as its constant input: the
    page said "no weights" for every conv of a float16 variant. The range is the float32
    model's, to float16 precision."""
    from core.engine.backends import tflite_from_reference
    from core.engine.diagnose import _float_ops
    from core.engine.layer_details import weight_ranges
    from core.engine.models import load_reference, model_sha256
    from core.types import VariantSpec

    path = tiny_models["keras"]
    model = load_reference(path)

    def convert(name: str) -> bytes:
        spec = VariantSpec.parse(name)
        return tflite_from_reference(model, spec, model_sha256=model_sha256(path)).tflite

    float32, float16 = convert("float32"), convert(variant)
    convs = [name for op, name, _ in _float_ops(float32) if op in ("CONV_2D", "FULLY_CONNECTED")]
    assert len(convs) >= 2
    exact, halved = weight_ranges(float32), weight_ranges(float16)
    for name in convs:
        assert halved[name] == pytest.approx(exact[name], rel=1e-3), name
