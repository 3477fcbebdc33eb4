"""Conversion: every mode gives bytes LiteRT runs, the cache is content-keyed, failures are one line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.engine.backends import tflite_from_reference
from core.engine.models import ReferenceModel, load_reference, model_sha256
from core.engine.runtime import TFLiteRunner
from core.errors import ConversionFailed, InvalidTFLiteModel
from core.types import Mode, VariantSpec

pytestmark = pytest.mark.slow  # real TensorFlow conversions


def _convert(
    model: ReferenceModel,
    path: Path,
    variant: str,
    calibration: np.ndarray | None = None,
    **kw: Any,
) -> Any:
    return tflite_from_reference(
        model,
        VariantSpec.parse(variant),
        model_sha256=model_sha256(path),
        calibration=calibration,
        **kw,
    )


def _litert_outputs(tflite: bytes, images: np.ndarray) -> np.ndarray:
    """Run bytes straight through ai_edge_litert (not core.engine.runtime), dequantizing by hand."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    rows = []
    for image in images:
        x = image[None]
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale) + zero, info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])[0]
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y.astype(np.float64) - zero) * scale
        rows.append(y)
    return np.asarray(rows, dtype=np.float64)


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


# Tolerance on the probability rows, against the reference, per mode. float32 is the same graph;
# the others lose precision by design, but on this 4-class model stay within these bounds.
TOLERANCE = {
    "float32": 1e-5,
    "dynamic": 0.02,
    "float16": 0.005,
    "int8": 0.03,
    "int8-uint8": 0.03,
    "int8-float32": 0.03,
    "int16x8": 0.01,
}


@pytest.mark.parametrize("variant", list(TOLERANCE))
def test_each_mode_converts_and_runs_in_litert(
    variant: str,
    tiny_ref: ReferenceModel,
    tiny_models: dict[str, Path],
    calibration: np.ndarray,
) -> None:
    result = _convert(tiny_ref, tiny_models["keras"], variant, calibration)
    assert result.tflite[4:8] == b"TFL3"
    assert result.cached is False and result.select_tf_ops_used == ()
    outputs = _litert_outputs(result.tflite, calibration[:8])
    expected = tiny_ref.predict(calibration[:8])
    assert np.isfinite(outputs).all()
    np.testing.assert_allclose(outputs, expected, atol=TOLERANCE[variant])


def test_keras_weights_are_frozen_not_left_as_variables(
    tiny_ref: ReferenceModel, tiny_models: dict[str, Path], calibration: np.ndarray
) -> None:
    """Regression: a .keras model once converted to uninitialised variables (NaN outputs)."""
    result = _convert(tiny_ref, tiny_models["keras"], "float16")
    assert b"VAR_HANDLE" not in result.tflite and b"READ_VARIABLE" not in result.tflite
    outputs = _litert_outputs(result.tflite, calibration[:4])
    np.testing.assert_allclose(outputs, tiny_ref.predict(calibration[:4]), atol=0.005)


def test_sizes_shrink_int8_below_float16_below_float32(tmp_path: Path) -> None:
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3))
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(32, 3, padding="same")(inp))
    x = layers.Dense(512, activation="relu")(layers.Dense(512, activation="relu")(x))
    keras.Model(inp, layers.Dense(10, activation="softmax")(x)).save(tmp_path / "wide.keras")
    model = load_reference(tmp_path / "wide.keras")
    params = (3 * 3 * 3 * 32 + 32) + (32 * 512 + 512) + (512 * 512 + 512) + (512 * 10 + 10)
    cal = np.random.default_rng(0).uniform(-1, 1, (8, 16, 16, 3)).astype(np.float32)
    size = {
        v: _convert(model, tmp_path / "wide.keras", v, cal).size_bytes
        for v in ("float32", "float16", "int8")
    }
    assert size["int8"] < size["float16"] < size["float32"]
    # Weights dominate: about 4, 2 and 1 bytes per parameter. The converter adds a few KB of
    # graph and shares identical buffers (the zero biases); int8 also keeps int32 biases and
    # per-channel scales and zero points, about 5 % more here.
    for variant, bytes_per_param, rel in (
        ("float32", 4, 0.03),
        ("float16", 2, 0.03),
        ("int8", 1, 0.08),
    ):
        assert size[variant] == pytest.approx(bytes_per_param * params, rel=rel), variant


def test_cache_returns_identical_bytes_and_misses_on_new_calibration(
    tiny_ref: ReferenceModel, tiny_models: dict[str, Path], calibration: np.ndarray, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = _convert(tiny_ref, tiny_models["keras"], "int8", calibration, cache_dir=cache)
    again = _convert(tiny_ref, tiny_models["keras"], "int8", calibration, cache_dir=cache)
    assert (first.cached, again.cached) == (False, True)
    assert again.tflite == first.tflite
    assert again.seconds == 0.0
    assert sorted(p.suffix for p in cache.iterdir()) == [".tflite"]  # no temp files left

    other = _convert(
        tiny_ref, tiny_models["keras"], "int8", calibration[::-1].copy(), cache_dir=cache
    )
    assert other.cached is False
    assert len(list(cache.iterdir())) == 2

    # Modes without calibration ignore it in the key: a different set is still a hit.
    f16 = _convert(tiny_ref, tiny_models["keras"], "float16", calibration, cache_dir=cache)
    f16_again = _convert(
        tiny_ref, tiny_models["keras"], "float16", calibration[:3], cache_dir=cache
    )
    assert (f16.cached, f16_again.cached) == (False, True)
    assert f16_again.tflite == f16.tflite


def test_calibration_with_nan_is_refused_before_converting(
    tiny_ref: ReferenceModel, tiny_models: dict[str, Path], calibration: np.ndarray, tmp_path: Path
) -> None:
    bad = calibration.copy()
    bad[3, 0, 0, 0] = np.nan
    bad[5, 2, 2, 1] = np.inf
    with pytest.raises(ConversionFailed) as info:
        _convert(tiny_ref, tiny_models["keras"], "int8", bad, cache_dir=tmp_path / "cache")
    assert str(info.value) == (
        f"calibration data holds NaN or Inf in 2 of {len(bad)} images; fix the preprocessing "
        "preset or the images"
    )
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("variant", ["int8", "int8-uint8", "int16x8"])
@pytest.mark.parametrize("empty", [None, "zero rows"])
def test_zero_usable_calibration_images(
    variant: str, empty: str | None, tiny_ref: ReferenceModel, tiny_models: dict[str, Path]
) -> None:
    calibration = None if empty is None else np.zeros((0, 16, 16, 3), np.float32)
    with pytest.raises(ConversionFailed) as info:
        _convert(tiny_ref, tiny_models["keras"], variant, calibration)
    mode = VariantSpec.parse(variant).mode
    assert str(info.value) == (
        f"{mode} needs calibration images and none could be decoded; pick a data set with "
        "usable images or choose float16 or dynamic"
    )


def test_modes_without_calibration_need_none(
    tiny_ref: ReferenceModel, tiny_models: dict[str, Path]
) -> None:
    for mode in (Mode.FLOAT32, Mode.DYNAMIC, Mode.FLOAT16):
        assert _convert(tiny_ref, tiny_models["keras"], str(mode), None).size_bytes > 0


# -- ops TFLite builtins lack ------------------------------------------------------------------
def _op_saved_model(path: Path, op: str) -> None:
    """A SavedModel classifier with one op TFLite builtins lack in the middle of the graph."""
    import tensorflow as tf

    def det(f: Any) -> Any:  # MatrixDeterminant: SELECT_TF_OPS provides it
        m = tf.reshape(tf.tile(f[:, :1], [1, 4]), [-1, 2, 2]) + tf.eye(2)
        return f * tf.linalg.det(m)[:, None]

    def erfinv(f: Any) -> Any:  # Erfinv: not even SELECT_TF_OPS provides it
        return tf.math.erfinv(tf.tanh(f) * 0.5)

    fn = {"det": det, "erfinv": erfinv}[op]

    class OpModel(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal((3, 4), seed=(1, 2)))

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
        def serve(self, x: Any) -> Any:
            return {"scores": tf.nn.softmax(fn(tf.reduce_mean(x, axis=[1, 2])) @ self.w)}

    module = OpModel()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


@pytest.fixture(scope="module")
def op_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("op_models")
    for op in ("det", "erfinv"):
        _op_saved_model(root / op, op)
    return {op: root / op for op in ("det", "erfinv")}


def test_unsupported_op_is_named_and_the_fallback_offered(op_models: dict[str, Path]) -> None:
    model = load_reference(op_models["det"])
    with pytest.raises(ConversionFailed) as info:
        _convert(model, op_models["det"], "float32")
    assert str(info.value) == (
        "float32: the model uses TensorFlow ops that TFLite builtins lack (MatrixDeterminant); "
        "allow the SELECT_TF_OPS fallback (variant float32+tf, --select-tf-ops) or replace those ops"
    )


def test_select_tf_ops_fallback_converts_and_lists_the_op(op_models: dict[str, Path]) -> None:
    model = load_reference(op_models["det"])
    result = _convert(model, op_models["det"], "float16+tf")
    assert result.select_tf_ops_used == ("MatrixDeterminant",)
    assert result.tflite[4:8] == b"TFL3"
    # This LiteRT build has no Flex delegate, so running it must fail as one clear line.
    with pytest.raises(InvalidTFLiteModel) as info:
        TFLiteRunner(result.tflite, name="float16+tf.tflite")
    assert str(info.value) == (
        "float16+tf.tflite needs TensorFlow (SELECT_TF_OPS) ops (MatrixDeterminant) that this "
        "LiteRT build cannot run (no Flex delegate); run the saved .tflite with a runtime that "
        "links the Flex delegate, or replace those ops"
    )


def test_select_tf_ops_with_calibration_fails_as_one_line(op_models: dict[str, Path]) -> None:
    model = load_reference(op_models["det"])
    cal = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 3)).astype(np.float32)
    with pytest.raises(ConversionFailed) as info:
        _convert(model, op_models["det"], "int8+tf", cal)
    assert str(info.value) == (
        "int8+tf: calibration has to run the model's TensorFlow (SELECT_TF_OPS) ops and this "
        "LiteRT build has no Flex delegate; choose float16+tf or dynamic+tf, or replace those ops"
    )


@pytest.mark.parametrize("variant", ["float32", "float32+tf"])
def test_op_no_op_set_provides_says_replace_it(variant: str, op_models: dict[str, Path]) -> None:
    model = load_reference(op_models["erfinv"])
    with pytest.raises(ConversionFailed) as info:
        _convert(model, op_models["erfinv"], variant)
    assert str(info.value) == (
        f"{variant}: the model uses TensorFlow ops that neither TFLite builtins nor the "
        "SELECT_TF_OPS fallback provide (Erfinv); replace those ops"
    )


# -- int16x8 refused by the kernels at prepare time --------------------------------------------
def _dead_depthwise_model(path: Path) -> None:
    """A depthwise conv + ReLU6 whose output is ~1e-6 on flat images.

    Calibration then gives its int16 output a scale near 3e-11, and the kernel's check that
    ReLU6's bound (6 / scale) fits in int32 fails at prepare time: the same refusal
    (kernel_util.cc no_integer_overflow_from_quantization, DEPTHWISE_CONV_2D) MobileNetV2 with
    random weights and random calibration shows here, in 2 s instead of a minute.
    """
    import keras
    from keras import layers

    inp = keras.Input((8, 8, 3), name="image")
    depthwise = layers.DepthwiseConv2D(3, padding="valid", use_bias=False)
    x = layers.GlobalAveragePooling2D()(layers.ReLU(6.0)(depthwise(inp)))
    model = keras.Model(inp, layers.Dense(4, activation="softmax")(x))
    kernel = np.ones((3, 3), np.float32)
    kernel[1, 1] = -8 + 1e-6  # sums to 1e-6: flat images give almost nothing
    depthwise.set_weights([np.repeat(kernel[:, :, None, None], 3, axis=2)])
    model.save(path)


def _flat_images(n: int, size: int = 8) -> np.ndarray:
    colours = np.random.default_rng(1).uniform(-1, 1, (n, 1, 1, 3))
    return (colours * np.ones((1, size, size, 3))).astype(np.float32)


def test_int16x8_refused_by_the_kernels_is_one_line(tmp_path: Path) -> None:
    _dead_depthwise_model(tmp_path / "dead.keras")
    model = load_reference(tmp_path / "dead.keras")
    result = _convert(model, tmp_path / "dead.keras", "int16x8", _flat_images(8))
    with pytest.raises(InvalidTFLiteModel) as info:
        TFLiteRunner(result.tflite, name="int16x8.tflite")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("the LiteRT kernels refused int16x8.tflite when preparing it (")
    assert "DEPTHWISE_CONV_2D" in message and "failed to prepare" in message
    assert message.endswith("); this mode does not run on this model, choose another")

    # The same model's int8 conversion is refused by XNNPACK only: the runner falls back to the
    # built-in kernels and says so, instead of losing the variant.
    int8 = _convert(model, tmp_path / "dead.keras", "int8", _flat_images(8))
    runner = TFLiteRunner(int8.tflite, name="int8.tflite")
    assert runner.describe()["delegate"] == "none (XNNPACK refused the model)"
    out = runner.run(_flat_images(1)[0])
    np.testing.assert_allclose(out, model.predict(_flat_images(1))[0], atol=0.02)


def run_dead_depthwise_job(tmp_path: Path, variants: tuple[str, ...]) -> dict[str, Any]:
    """Run the job code on `_dead_depthwise_model` over ten flat images; returns report.json."""
    import csv

    from PIL import Image

    from core.engine.pipeline import run_job
    from core.inputs import rundir
    from core.types import JobSpec, Preset

    _dead_depthwise_model(tmp_path / "dead.keras")
    colours = np.random.default_rng(2).integers(0, 256, (10, 3))
    with (tmp_path / "flat.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "label"])
        for i, colour in enumerate(colours):
            Image.new("RGB", (8, 8), tuple(int(c) for c in colour)).save(tmp_path / f"{i}.png")
            writer.writerow([f"{i}.png", i % 4])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job = JobSpec(
        model_path=str(tmp_path / "dead.keras"),
        data_path=str(tmp_path / "flat.csv"),
        variants=variants,
        preset=Preset.MOBILENET_V2,
        latency_runs=2,
        warmup_runs=1,
    )
    run_job(job, run_dir, progress=lambda _event: None, cache_dir=None)
    report: dict[str, Any] = rundir.read_json(run_dir / rundir.REPORT)
    return report


def test_int16x8_refusal_is_a_variant_result_not_a_crash(tmp_path: Path) -> None:
    """Through the job code: int16x8 ends `failed` with the kernel's line; float32 is done."""
    report = run_dead_depthwise_job(tmp_path, ("int16x8", "float32"))
    by_name = {v["name"]: v for v in report["variants"]}
    assert by_name["float32"]["status"] == "done"
    assert by_name["int16x8"]["status"] == "failed"
    assert re.fullmatch(
        r"the LiteRT kernels refused int16x8\.tflite when preparing it \(.*DEPTHWISE_CONV_2D.*\); "
        r"this mode does not run on this model, choose another",
        by_name["int16x8"]["error"],
    )
    assert report["run"]["status"] == "done"
