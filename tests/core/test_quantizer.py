"""The quantizer backend: every recipe and I/O type runs in LiteRT with the right tensor types,
uint8 I/O keeps buffers stored outside the flatbuffer, per-layer overrides really keep ops in
float, the cache is content-keyed, and failures are one line on that variant alone."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.engine.backends import tflite_from_reference
from core.engine.models import ReferenceModel, load_reference, model_sha256
from core.engine.runtime import TFLiteRunner
from core.errors import ConversionFailed, InvalidTFLiteModel
from core.types import VariantSpec
from tests.core.test_convert import _dead_depthwise_model, run_dead_depthwise_job

pytestmark = pytest.mark.slow  # real TensorFlow conversions and LiteRT Quantizer recipes


def _convert(
    model: ReferenceModel, path: Path, variant: str, calibration: np.ndarray | None, **kw: Any
) -> Any:
    return tflite_from_reference(
        model,
        VariantSpec.parse(variant),
        model_sha256=model_sha256(path),
        calibration=calibration,
        **kw,
    )


def _interpreter(tflite: bytes) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite)
    interpreter.allocate_tensors()
    return interpreter


def _raw_outputs(tflite: bytes, inputs: np.ndarray) -> np.ndarray:
    """The output tensor as stored (no dequantization), for inputs already in the input dtype."""
    interpreter = _interpreter(tflite)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    rows = []
    for x in inputs:
        interpreter.set_tensor(inp["index"], x[None])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.asarray(rows)


def _float_outputs(tflite: bytes, images: np.ndarray) -> np.ndarray:
    """Float32 images in, float64 outputs out: quantized by hand with the tensors' own params."""
    interpreter = _interpreter(tflite)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    x = images.astype(np.float64)
    if inp["dtype"] != np.float32:
        scale, zero = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        x = np.clip(np.round(x / scale) + zero, info.min, info.max)
    y = _raw_outputs(tflite, x.astype(inp["dtype"])).astype(np.float64)
    if out["dtype"] != np.float32:
        scale, zero = out["quantization"]
        y = (y - zero) * scale
    return y


def _schema_names(enum_class: Any) -> dict[int, str]:
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_")}


def _ops(tflite: bytes) -> list[tuple[str, str, str]]:
    """(op, output tensor type, output tensor name) for every op, read from the flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    graph = model.subgraphs[0]
    op_names = _schema_names(schema.BuiltinOperator)
    type_names = _schema_names(schema.TensorType)
    rows = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        tensor = graph.tensors[op.outputs[0]]
        rows.append(
            (
                op_names[max(code.builtinCode, code.deprecatedBuiltinCode)],
                type_names[tensor.type],
                tensor.name.decode(),
            )
        )
    return rows


def _weight_types(tflite: bytes) -> Counter[str]:
    """Types of the tensors that hold data (weights, biases, constants)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    type_names = _schema_names(schema.TensorType)
    found: Counter[str] = Counter()
    for tensor in model.subgraphs[0].tensors:
        data = model.buffers[tensor.buffer].data
        if data is not None and len(data) > 0:
            found[type_names[tensor.type]] += 1
    return found


@pytest.fixture(scope="module")
def tiny_ref(tiny_models: dict[str, Path]) -> ReferenceModel:
    return load_reference(tiny_models["keras"])


@pytest.fixture(scope="module")
def calibration(tiny_data: Path) -> np.ndarray:
    from core.inputs.datasets import load_dataset
    from core.inputs.images import decode_image
    from core.inputs.presets import apply_preset
    from core.types import Preset

    samples = load_dataset(tiny_data).samples
    pixels = np.stack([decode_image(s.path, height=16, width=16, channels=3) for s in samples])
    return apply_preset(pixels, Preset.MOBILENET_V2).astype(np.float32)


@pytest.fixture(scope="module")
def float32_outputs(
    tiny_ref: ReferenceModel, tiny_models: dict[str, Path], calibration: np.ndarray
) -> np.ndarray:
    result = _convert(tiny_ref, tiny_models["keras"], "float32", None)
    return _float_outputs(result.tflite, calibration)


# variant -> (input dtype, output dtype, tolerance against float32 TFLite on the softmax
# output). Quantized activations: three steps of the int8 output grid (scale 1/256); the
# weight-only modes keep float activations and lose less.
INT8_STEP = 1 / 256
RECIPES = {
    "float16_q": ("float32", "float32", 1e-3),
    "dynamic_q": ("float32", "float32", 3 * INT8_STEP),
    "int8_q": ("int8", "int8", 3 * INT8_STEP),
    "int8-uint8_q": ("uint8", "uint8", 3 * INT8_STEP),
    "int8-float32_q": ("float32", "float32", 3 * INT8_STEP),
    "int16x8_q": ("float32", "float32", 3 * INT8_STEP),
    "int4w_q": ("float32", "float32", 3 * INT8_STEP),
}


@pytest.mark.parametrize("variant", list(RECIPES))
def test_each_recipe_and_io_type_runs_in_litert(
    variant: str,
    tiny_ref: ReferenceModel,
    tiny_models: dict[str, Path],
    calibration: np.ndarray,
    float32_outputs: np.ndarray,
) -> None:
    input_dtype, output_dtype, tolerance = RECIPES[variant]
    result = _convert(tiny_ref, tiny_models["keras"], variant, calibration)
    assert result.tflite[4:8] == b"TFL3" and result.cached is False
    interpreter = _interpreter(result.tflite)
    assert interpreter.get_input_details()[0]["dtype"] == np.dtype(input_dtype)
    assert interpreter.get_output_details()[0]["dtype"] == np.dtype(output_dtype)
    outputs = _float_outputs(result.tflite, calibration)
    assert np.isfinite(outputs).all()
    np.testing.assert_allclose(outputs, float32_outputs, atol=tolerance)
    # The recipe did what its name says to the weights.
    weights = _weight_types(result.tflite)
    expected_weight = {
        "float16_q": "FLOAT16",
        "dynamic_q": "INT8",
        "int4w_q": "INT4",
    }.get(variant, "INT8")
    assert weights[expected_weight] > 0, weights
    if variant in ("float16_q", "int4w_q"):
        assert weights["INT8"] == 0, weights


def test_quantizer_and_converter_agree_on_dtypes_of_shared_modes(
    tiny_ref: ReferenceModel, tiny_models: dict[str, Path], calibration: np.ndarray
) -> None:
    """The two backends are comparable: the same mode gives the same model I/O types."""
    for mode in ("float16", "dynamic", "int8", "int8-uint8", "int8-float32", "int16x8"):
        types = []
        for variant in (mode, f"{mode}_q"):
            interpreter = _interpreter(
                _convert(tiny_ref, tiny_models["keras"], variant, calibration).tflite
            )
            types.append(
                (
                    interpreter.get_input_details()[0]["dtype"],
                    interpreter.get_output_details()[0]["dtype"],
                )
            )
        assert types[0] == types[1], mode


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model with a 768x512 Dense: its int8 weights (384 KiB) exceed the 256 KiB beyond
    which the quantizer stores buffers outside the flatbuffer."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3), name="image")
    x = layers.Flatten()(inp)
    x = layers.Dense(512, activation="relu")(x)
    model = keras.Model(inp, layers.Dense(4, activation="softmax")(x))
    path = tmp_path_factory.mktemp("wide") / "wide.keras"
    model.save(path)
    return path


def _buffer_offsets(tflite: bytes) -> list[int]:
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(tflite, 0)
    return [model.Buffers(i).Offset() for i in range(model.BuffersLength())]


def test_uint8_io_keeps_buffers_stored_after_the_flatbuffer(wide_model: Path) -> None:
    model = load_reference(wide_model)
    images = np.random.default_rng(3).uniform(-1, 1, (12, 16, 16, 3)).astype(np.float32)
    int8 = _convert(model, wide_model, "int8_q", images).tflite
    assert any(offset > 0 for offset in _buffer_offsets(int8)), "the trap is not exercised"
    uint8 = _convert(model, wide_model, "int8-uint8_q", images).tflite
    interpreter = _interpreter(uint8)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    int8_interpreter = _interpreter(int8)
    int8_in = int8_interpreter.get_input_details()[0]
    int8_out = int8_interpreter.get_output_details()[0]
    # Same scales; zero points moved by 128.
    assert inp["dtype"] == np.uint8 and out["dtype"] == np.uint8
    assert inp["quantization"] == (int8_in["quantization"][0], int8_in["quantization"][1] + 128)
    assert out["quantization"] == (int8_out["quantization"][0], int8_out["quantization"][1] + 128)
    # The int8 graph sees exactly the same values: the uint8 model's outputs are the int8
    # model's shifted by 128, bit for bit.
    q = np.random.default_rng(4).integers(-128, 128, (6, 16, 16, 3))
    from_int8 = _raw_outputs(int8, q.astype(np.int8)).astype(np.int32)
    from_uint8 = _raw_outputs(uint8, (q + 128).astype(np.uint8)).astype(np.int32)
    np.testing.assert_array_equal(from_uint8, from_int8 + 128)
    # And the model still answers like the original.
    expected = model.predict(images[:6])
    np.testing.assert_allclose(_float_outputs(uint8, images[:6]), expected, atol=3 * INT8_STEP)


def test_keep_and_int16_overrides_change_exactly_the_named_layers(
    tiny_ref: ReferenceModel, tiny_models: dict[str, Path], calibration: np.ndarray
) -> None:
    path = tiny_models["keras"]
    plain = _ops(_convert(tiny_ref, path, "int8_q", calibration).tflite)
    kept = _ops(_convert(tiny_ref, path, "int8_q:keep=dense", calibration).tflite)
    mixed = _ops(_convert(tiny_ref, path, "int8_q:int16=conv2d_1", calibration).tflite)

    def output_type(ops: list[tuple[str, str, str]], op: str, scope: str) -> list[str]:
        return [t for name, t, tensor in ops if name == op and f"/{scope}/" in tensor]

    # The tiny model's layer `dense` is the scope dense_1 and `conv2d_1` is conv2d_1_2
    # (Keras 3 suffixes each scope with _<n>).
    assert output_type(plain, "FULLY_CONNECTED", "dense_1") == ["INT8"]
    assert output_type(kept, "FULLY_CONNECTED", "dense_1") == ["FLOAT32"]
    assert output_type(kept, "FULLY_CONNECTED", "scores_1") == ["INT8"]
    assert output_type(kept, "CONV_2D", "conv2d_1_2") == ["INT8"]
    assert output_type(plain, "CONV_2D", "conv2d_1_2") == ["INT8"]
    assert output_type(mixed, "CONV_2D", "conv2d_1_2") == ["INT16"]
    assert output_type(mixed, "CONV_2D", "conv2d_1") == ["INT8"]
    # The kept layer runs and still answers like the original.
    result = _convert(tiny_ref, path, "int8_q:keep=dense", calibration)
    np.testing.assert_allclose(
        _float_outputs(result.tflite, calibration[:8]),
        tiny_ref.predict(calibration[:8]),
        atol=3 * INT8_STEP,
    )


def test_unknown_layer_is_one_line_with_the_nearest_names(
    tiny_ref: ReferenceModel, tiny_models: dict[str, Path], calibration: np.ndarray
) -> None:
    with pytest.raises(ConversionFailed) as info:
        _convert(tiny_ref, tiny_models["keras"], "int8_q:keep=dens", calibration)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("int8_q:keep=dens: no op of the converted model comes from a layer")
    nearest = message.split("nearest layer names: ")[1].split(", ")
    assert nearest[0] == "dense"


def test_layer_names_read_from_keras_scopes() -> None:
    from core.engine.quantizer import layers_in_tensor_name

    name = (
        "functional_1/re_lu_1_2/Relu6;functional_1/batch_normalization_1_2/batchnorm/mul_1;"
        "functional_1/depthwise_conv2d_1/depthwise;1"
    )
    assert layers_in_tensor_name(name) == ["re_lu_1", "batch_normalization_1", "depthwise_conv2d"]
    assert layers_in_tensor_name("StatefulPartitionedCall_1:0") == []


def test_cache_reuses_the_float_model_and_keys_on_calibration(
    tiny_ref: ReferenceModel, tiny_models: dict[str, Path], calibration: np.ndarray, tmp_path: Path
) -> None:
    path = tiny_models["keras"]
    first = _convert(tiny_ref, path, "int8_q", calibration, cache_dir=tmp_path)
    # One float32 conversion and one quantized model are cached.
    assert len(list(tmp_path.glob("*.tflite"))) == 2
    again = _convert(tiny_ref, path, "int8_q", calibration, cache_dir=tmp_path)
    assert again.cached is True and again.tflite == first.tflite and again.seconds == 0.0
    other = _convert(tiny_ref, path, "int8_q", calibration[::-1].copy(), cache_dir=tmp_path)
    assert other.cached is False
    dynamic = _convert(tiny_ref, path, "dynamic_q", None, cache_dir=tmp_path)
    assert dynamic.cached is False
    # The float32 model was converted once, not once per recipe.
    assert len(list(tmp_path.glob("*.tflite"))) == 4


def test_quantizer_prints_nothing_on_stdout(
    tiny_ref: ReferenceModel,
    tiny_models: dict[str, Path],
    calibration: np.ndarray,
    capfd: pytest.CaptureFixture[str],
) -> None:
    _convert(tiny_ref, tiny_models["keras"], "float32", None)
    capfd.readouterr()
    _convert(tiny_ref, tiny_models["keras"], "int8_q", calibration)
    captured = capfd.readouterr()
    assert captured.out == ""


def test_recipe_the_kernels_refuse_fails_that_variant_alone(tmp_path: Path) -> None:
    report = run_dead_depthwise_job(tmp_path, ("int16x8_q", "float16_q"))
    by_name = {v["name"]: v for v in report["variants"]}
    assert by_name["float16_q"]["status"] == "done"
    assert by_name["float16_q"]["backend"] == "quantizer"
    assert by_name["int16x8_q"]["status"] == "failed"
    assert re.fullmatch(
        r"the LiteRT kernels refused int16x8_q\.tflite when preparing it \(.*DEPTHWISE_CONV_2D"
        r".*failed to prepare.*\); this mode does not run on this model, choose another",
        by_name["int16x8_q"]["error"],
    )
    assert report["run"]["status"] == "done"


def test_runner_refusal_names_the_kernel(tmp_path: Path) -> None:
    _dead_depthwise_model(tmp_path / "dead.keras")
    model = load_reference(tmp_path / "dead.keras")
    flat = np.random.default_rng(1).uniform(-1, 1, (8, 1, 1, 3)) * np.ones((1, 8, 8, 3))
    result = _convert(model, tmp_path / "dead.keras", "int16x8_q", flat.astype(np.float32))
    with pytest.raises(InvalidTFLiteModel) as info:
        TFLiteRunner(result.tflite, name="int16x8_q.tflite")
    assert "\n" not in str(info.value)
    assert "no_integer_overflow_from_quantization" in str(info.value)


def test_calibration_takes_the_converters_ranges(wide_model: Path) -> None:
    """Same images, same statistic (min/max over all of them): on a wide Dense, where the
    quantizer's default per-image moving average clips the logits, int8_q answers as the
    converter's int8 does, within one step of the output grid."""
    model = load_reference(wide_model)
    images = np.random.default_rng(3).uniform(-1, 1, (12, 16, 16, 3)).astype(np.float32)
    converter = _float_outputs(_convert(model, wide_model, "int8", images).tflite, images)
    quantizer = _float_outputs(_convert(model, wide_model, "int8_q", images).tflite, images)
    np.testing.assert_allclose(quantizer, converter, atol=INT8_STEP)


def test_float_conversion_failure_is_named_on_the_quantizer_variant(tmp_path: Path) -> None:
    from tests.core.test_convert import _op_saved_model

    _op_saved_model(tmp_path / "det", "det")
    model = load_reference(tmp_path / "det")
    with pytest.raises(ConversionFailed) as info:
        _convert(model, tmp_path / "det", "dynamic_q", None)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        "dynamic_q: the quantizer starts from the float32 model and that conversion failed: "
        "float32: the model uses TensorFlow ops that TFLite builtins lack (MatrixDeterminant)"
    )
