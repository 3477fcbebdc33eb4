"""Cross-layer equalization (core.engine.equalize) on the outlier-channel model
(core.engine.outlier_demo): the equalized float model keeps the original's outputs, the outlier
pair's range ratio drops from ~400 to ~1, and int8 recovers from collapse at the same size and
integer-only; models it cannot pair are skipped with a reason; ReLU6 is handled three ways.

Every figure the implementation reports is recomputed here with plain Keras, numpy, the
TFLiteConverter and the ai_edge_litert interpreter."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from core.engine.equalize import EqualizationError, equalize, rescale_channels, verify_equalized
from core.errors import QuantLensError

pytestmark = pytest.mark.slow

SIZE = 16  # sklearn's 8x8 digits, upsampled 2x
N_TRAIN = 1100  # the rest (697 images) are held out


@pytest.fixture(scope="module")
def digits() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = np.kron(data.images, np.ones((2, 2)))[..., None].repeat(3, -1)
    x = (x / 8.0 - 1.0).astype(np.float32)  # 0..16 ink -> [-1, 1]
    order = np.random.default_rng(0).permutation(len(x))
    train, held = order[:N_TRAIN], order[N_TRAIN:]
    return {"x_train": x[train], "y_train": data.target[train], "x_held": x[held]}


@pytest.fixture(scope="module")
def outlier(digits: dict[str, np.ndarray]) -> dict[str, Any]:
    """The trained net, its outlier twin, and the twin equalized on 200 training images."""
    from core.engine.outlier_demo import outlier_model

    base, model, channel = outlier_model(digits["x_train"], digits["y_train"], epochs=6)
    before = [w.copy() for w in model.get_weights()]
    equalized, record = equalize(model, digits["x_train"][:200])
    return {
        "base": base,
        "model": model,
        "channel": channel,
        "equalized": equalized,
        "record": record,
        "weights_before": before,
    }


def _keras(model: Any, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(x, batch_size=128, verbose=0), dtype=np.float64)


def test_outlier_rescaling_preserves_the_trained_model(
    outlier: dict[str, Any], digits: dict[str, np.ndarray]
) -> None:
    kernel = outlier["model"].get_layer("conv2").get_weights()[0]
    peaks = np.max(np.abs(kernel.reshape(-1, kernel.shape[-1])), axis=0)
    assert np.argmax(peaks) == outlier["channel"]
    assert peaks[outlier["channel"]] / np.median(peaks) > 100
    base, model = (
        _keras(outlier["base"], digits["x_held"]),
        _keras(outlier["model"], digits["x_held"]),
    )
    assert np.max(np.abs(base - model)) < 1e-4


def test_equalized_float_model_equals_the_original(
    outlier: dict[str, Any], digits: dict[str, np.ndarray]
) -> None:
    record, equalized = outlier["record"], outlier["equalized"]
    assert record.equalized and record.reason is None
    assert ("conv2", "conv3") in {(p.first, p.second) for p in record.pairs}
    original = _keras(outlier["model"], digits["x_held"])
    after = _keras(equalized, digits["x_held"])
    assert np.max(np.abs(original - after)) < 1e-4
    assert np.array_equal(original.argmax(1), after.argmax(1))
    # the caller's model was not touched
    for w0, w1 in zip(outlier["weights_before"], outlier["model"].get_weights(), strict=True):
        assert np.array_equal(w0, w1)
    # the record's own measurement (on the 200 calibration images) agrees with ours
    calib = digits["x_train"][:200]
    delta = np.max(np.abs(_keras(outlier["model"], calib) - _keras(equalized, calib)))
    assert record.float_change is not None and record.float_change.top1_agreement == 1.0
    assert record.float_change.max_abs_delta == pytest.approx(delta, abs=1e-6)
    fix = record.as_fix()
    assert fix["kind"] == "equalize" and ["conv2", "conv3"] in fix["pairs"]
    assert fix["layers"] == ["conv1", "conv2", "conv3", "probabilities"]


def test_range_ratio_of_the_outlier_pair_drops_from_400_to_below_2(
    outlier: dict[str, Any], digits: dict[str, np.ndarray]
) -> None:
    import keras

    pair = next(p for p in outlier["record"].pairs if p.first == "conv2")
    assert pair.between == ("relu2", "pool2") and pair.channels == 32

    def weight_ratio(model: Any) -> float:
        kernel = model.get_layer("conv2").get_weights()[0]
        peaks = np.abs(kernel).max(axis=(0, 1, 2))
        return float(peaks.max() / np.median(peaks))

    def activation_ratio(model: Any) -> float:
        probe = keras.Model(model.inputs[0], model.get_layer("pool2").output)
        peaks = np.abs(np.asarray(probe(digits["x_train"][:200]))).max(axis=(0, 1, 2))
        return float(peaks.max() / np.median(peaks[peaks > 0]))

    assert weight_ratio(outlier["model"]) == pytest.approx(pair.range_ratio_before, rel=1e-5)
    assert weight_ratio(outlier["equalized"]) == pytest.approx(pair.range_ratio_after, rel=1e-4)
    assert pair.range_ratio_before > 300 and pair.range_ratio_after < 2
    assert activation_ratio(outlier["model"]) == pytest.approx(
        pair.activation_ratio_before, rel=1e-4
    )
    assert activation_ratio(outlier["equalized"]) == pytest.approx(
        pair.activation_ratio_after, rel=1e-4
    )
    assert pair.activation_ratio_before > 300 and pair.activation_ratio_after < 2.5


def _convert(model: Any, calibration: np.ndarray | None) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            [calibration[i : i + 1]] for i in range(len(calibration))
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return bytes(converter.convert())


def _litert_top1(content: bytes, x: np.ndarray) -> tuple[np.ndarray, set[str]]:
    """Top-1 per image from the real interpreter, and the dtypes of every tensor in the model."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    top1 = []
    for image in x:
        value = image[None]
        if inp["dtype"] == np.int8:
            scale, zero = inp["quantization"]
            value = np.clip(np.round(value / scale + zero), -128, 127).astype(np.int8)
        interpreter.set_tensor(inp["index"], value)
        interpreter.invoke()
        top1.append(int(np.argmax(interpreter.get_tensor(out["index"])[0])))
    dtypes = {np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}
    return np.asarray(top1), dtypes


def test_int8_collapses_on_the_outlier_and_recovers_after_equalization(
    outlier: dict[str, Any], digits: dict[str, np.ndarray]
) -> None:
    held = digits["x_held"]
    assert len(held) >= 200
    calibration = digits["x_train"][-50:]
    reference = _keras(outlier["model"], held).argmax(1)
    float32, _ = _litert_top1(_convert(outlier["model"], None), held)
    plain_file = _convert(outlier["model"], calibration)
    equalized_file = _convert(outlier["equalized"], calibration)
    plain, _ = _litert_top1(plain_file, held)
    equalized, dtypes = _litert_top1(equalized_file, held)

    float32_agreement = float(np.mean(float32 == reference))
    plain_agreement = float(np.mean(plain == reference))
    equalized_agreement = float(np.mean(equalized == reference))
    measured = (
        f"agreement on {len(held)} held-out images: float32 {float32_agreement:.1%}, "
        f"int8 {plain_agreement:.1%} ({len(plain_file)} B), "
        f"equalized int8 {equalized_agreement:.1%} ({len(equalized_file)} B)"
    )
    assert plain_agreement < 0.5, measured  # collapse
    assert equalized_agreement >= float32_agreement - 0.02, measured
    assert len(equalized_file) <= 1.01 * len(plain_file)
    assert dtypes <= {"int8", "int32"}, dtypes  # integer-only: no float tensor anywhere


def _subclassed() -> Any:
    import keras

    class Net(keras.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.a = keras.layers.Conv2D(4, 3)
            self.b = keras.layers.Conv2D(4, 3)

        def call(self, x: Any) -> Any:
            return self.b(keras.ops.relu(self.a(x)))

    net = Net()
    net(np.zeros((1, 8, 8, 3), np.float32))
    return net


def test_a_subclassed_model_is_skipped_with_its_reason() -> None:
    model = _subclassed()
    equalized, record = equalize(model)
    assert equalized is None and not record.equalized
    assert record.reason is not None and "subclassed" in record.reason and "\n" not in record.reason
    with pytest.raises(QuantLensError, match="subclassed"):
        rescale_channels(model, "a", "b", np.ones(4))


def test_a_custom_layer_between_two_convs_is_skipped_with_its_reason() -> None:
    import keras
    from keras import layers

    class Scale(layers.Layer):  # type: ignore[misc]
        def call(self, x: Any) -> Any:
            return x * 2.0 + 1.0

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, name="a")(inputs)
    x = Scale(name="custom")(x)
    x = layers.Conv2D(6, 1, name="b")(x)
    x = layers.ReLU(name="r")(x)
    outputs = layers.Conv2D(5, 1, name="c")(x)
    model = keras.Model(inputs, outputs)
    images = np.random.default_rng(0).normal(size=(8, 8, 8, 3)).astype(np.float32)
    equalized, record = equalize(model, images)
    skipped = {s.layer: s.reason for s in record.skipped}
    assert "custom layer custom" in skipped["a"]
    assert [(p.first, p.second) for p in record.pairs] == [("b", "c")]
    assert np.max(np.abs(_keras(model, images) - _keras(equalized, images))) < 1e-4

    class NoConfig(layers.Layer):  # type: ignore[misc]
        def __init__(self, factor: float) -> None:
            super().__init__()
            self.factor = factor

        def call(self, x: Any) -> Any:
            return x * self.factor

    y = NoConfig(2.0)(layers.Conv2D(4, 3)(inputs))
    broken, why = equalize(keras.Model(inputs, layers.Conv2D(3, 1)(y)))
    assert broken is None and why.reason is not None and "cloned" in why.reason


def _relu6_model(*, clipping_channel: bool) -> Any:
    """conv -> batch norm -> ReLU6 -> conv -> ReLU -> dense, with unbalanced channels."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(8, 3, name="a", use_bias=False)(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(6.0, name="relu6")(x)
    x = layers.Conv2D(6, 1, name="b")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(4, name="logits")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(3)
    gamma = rng.uniform(0.05, 0.6, 8)
    beta = rng.uniform(0.0, 0.5, 8)
    if clipping_channel:
        gamma[2], beta[2] = 4.0, 3.0  # this channel reaches the clip at 6
    model.get_layer("bn").set_weights([gamma, beta, rng.normal(0, 0.1, 8), rng.uniform(0.5, 2, 8)])
    return model


def _images(n: int = 32) -> np.ndarray:
    return np.random.default_rng(5).uniform(-1, 1, (n, 8, 8, 3)).astype(np.float32)


def test_relu6_skip_and_no_images_give_reasons() -> None:
    model = _relu6_model(clipping_channel=False)
    _, record = equalize(model, relu6="skip")
    assert "clips at 6" in {s.layer: s.reason for s in record.skipped}["a"]
    _, record = equalize(model)  # if_unclipped without images
    assert "give calibration images" in {s.layer: s.reason for s in record.skipped}["a"]


@pytest.mark.parametrize("clipping", [False, True])
def test_relu6_is_equalized_only_where_the_clip_is_not_reached(clipping: bool) -> None:
    import keras

    model = _relu6_model(clipping_channel=clipping)
    images = _images()
    equalized, record = equalize(model, images, relu6="if_unclipped")
    pair = next(p for p in record.pairs if p.first == "a")
    assert pair.relu6 == "unclipped" and pair.second == "b"
    tap = keras.Model(model.inputs[0], model.get_layer("bn").output)
    clipped = np.asarray(tap(images)).max(axis=(0, 1, 2)) >= 6.0
    assert clipped.any() == clipping and pair.frozen_channels == int(clipped.sum())
    assert pair.range_ratio_after < pair.range_ratio_before
    # exact on the images: the clip is still not reached where it was not
    assert np.max(np.abs(_keras(model, images) - _keras(equalized, images))) < 1e-4
    after = keras.Model(equalized.inputs[0], equalized.get_layer("bn").output)
    peaks = np.asarray(after(images)).max(axis=(0, 1, 2))
    assert np.all(peaks[~clipped] <= 6.0 + 1e-4)


def test_relu6_replaced_by_relu_reports_the_float_change() -> None:
    model = _relu6_model(clipping_channel=True)
    images = _images()
    equalized, record = equalize(model, images, relu6="replace")
    assert record.relu6_replaced == ("relu6",)
    assert equalized.get_layer("relu6").max_value is None
    assert next(p for p in record.pairs if p.first == "a").relu6 == "replaced"
    delta = np.max(np.abs(_keras(model, images) - _keras(equalized, images)))
    assert delta > 1e-3  # the clipping channel makes ReLU -> ReLU6 a real change
    assert record.float_change is not None
    assert record.float_change.max_abs_delta == pytest.approx(delta, rel=1e-4)
    with pytest.raises(
        EqualizationError, match=r"max \|Δ output\| [0-9.e-]+ \(tolerance 0.0001\)"
    ) as refused:
        verify_equalized(model, equalized, images, tolerance=1e-4)
    assert "\n" not in str(refused.value)


def test_a_sequential_model_is_equalized() -> None:
    import keras
    from keras import layers

    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            layers.Conv2D(6, 3, activation="relu", name="a"),
            layers.MaxPooling2D(name="pool"),
            layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw"),
            layers.ReLU(name="r"),
            layers.Conv2D(5, 1, name="b"),
        ]
    )
    model.get_layer("a").kernel.assign(model.get_layer("a").kernel * np.linspace(0.1, 30, 6))
    images = _images()
    equalized, record = equalize(model, images)
    assert [(p.first, p.second) for p in record.pairs] == [("a", "dw"), ("dw", "b")]
    assert np.max(np.abs(_keras(model, images) - _keras(equalized, images))) < 1e-4
    result = verify_equalized(model, equalized, images)
    assert result.top1_agreement == 1.0 and result.images == len(images)
    with pytest.raises(EqualizationError, match="do not fit the model's input"):
        equalize(model, images[:, :4])


def test_branching_is_skipped_and_an_always_positive_bias_is_absorbed() -> None:
    import keras
    from keras import layers

    keras.utils.set_random_seed(2)
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(6, 3, name="a")(inputs)
    x = layers.ReLU(name="r")(a)
    x = layers.Conv2D(6, 1, name="b")(x)
    x = layers.ReLU(name="r2")(x)
    y = layers.Conv2D(6, 1, name="c")(x)
    outputs = layers.Add(name="residual")([x, y])
    model = keras.Model(inputs, outputs)
    bias = np.zeros(6, np.float32)
    bias[1] = 50.0  # channel 1 of a is positive on every image: its bias can move into b
    model.get_layer("a").bias.assign(bias)
    images = _images()
    equalized, record = equalize(model, images)
    skipped = {s.layer: s.reason for s in record.skipped}
    assert "r2 branches into 2 layers" in skipped["b"]
    pair = next(p for p in record.pairs if p.first == "a")
    assert pair.second == "b" and pair.bias_absorbed_channels == 1
    # the constant moved: channel 1's smallest pre-activation on the images is now 0
    probe = keras.Model(equalized.inputs[0], equalized.get_layer("a").output)
    low = np.asarray(probe(images)).min(axis=(0, 1, 2))
    assert abs(low[1]) < 1e-4 and np.all(np.delete(low, 1) < 0)  # the others were not shifted
    assert np.max(np.abs(_keras(model, images) - _keras(equalized, images))) < 1e-4


def test_the_outlier_demo_is_built_from_the_demo_digits_and_documented(tmp_path: Any) -> None:
    import keras

    from core.engine.demo_models import write_digit_images
    from core.engine.outlier_demo import OUTLIER_FACTOR, build_outlier_demo

    write_digit_images(tmp_path / "data")
    folder = build_outlier_demo(tmp_path)
    assert (folder / "saved_model" / "saved_model.pb").is_file()
    assert float((folder / "ACCURACY").read_text()) > 0.9
    note = (folder / "NOTE").read_text()
    assert "multiplied by 400" in note and "function-preserving" in note
    model = keras.saving.load_model(folder / "digits_outlier.keras")
    kernel = model.get_layer("conv2").get_weights()[0]
    peaks = np.abs(kernel).max(axis=(0, 1, 2))
    assert peaks.max() / np.median(peaks) > OUTLIER_FACTOR / 4
    assert build_outlier_demo(tmp_path) == folder  # built once


def test_a_mobilenet_style_chain_with_batch_norm_and_depthwise_stays_exact() -> None:
    from tests.core.conftest import TINY_SIZE, build_tiny_model

    model = build_tiny_model(softmax=False)
    images = np.random.default_rng(9).uniform(-1, 1, (32, TINY_SIZE, TINY_SIZE, 3))
    images = images.astype(np.float32)
    equalized, record = equalize(model, images)
    pairs = {(p.first, p.second): p for p in record.pairs}
    kinds = {
        model.get_layer(a).__class__.__name__ + ">" + model.get_layer(b).__class__.__name__
        for a, b in pairs
    }
    assert {"Conv2D>DepthwiseConv2D", "DepthwiseConv2D>Conv2D", "Dense>Dense"} <= kinds
    through_relu6 = [
        p
        for p in record.pairs
        if any(getattr(model.get_layer(n), "max_value", None) == 6.0 for n in p.between)
    ]
    assert len(through_relu6) == 3 and all(p.relu6 == "unclipped" for p in through_relu6)
    assert np.max(np.abs(_keras(model, images) - _keras(equalized, images))) < 1e-4
