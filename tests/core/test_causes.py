"""Root causes of int8 error (core.engine.causes), on a real trained model made to fail in known
ways, and the naming rules on crafted signal values.

The model is a small conv net trained on scikit-learn's digits. Its failures are built by hand:
- an outlier channel by a function-preserving rescaling (one output channel of conv_a, kernel
  and bias, times 400; the matching input channel of conv_b divided by 400; ReLU and max-pool
  between them are positively homogeneous, so the float model computes the same function);
- one huge weight in conv_b;
- calibration on darker images than the evaluated ones (clipping).
Expected numbers are recomputed here from a Keras sub-model's output with numpy, not from the
`.tflite` the implementation reads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.engine.causes import (
    ACTIVATION_RANGE_RATIO,
    COLLAPSE_LEVELS,
    INPUT_LAYER,
    ActivationSignals,
    PresetCheck,
    WeightSignals,
    find_causes,
    name_causes,
)
from core.errors import ConversionFailed
from core.fix_variants import FIX_ORDER

SIZE = 16
RESCALE = 400.0
CHANNEL = 5  # the rescaled channel of conv_a
CALIBRATION = 40
EVALUATED = 60


# -- the real models -----------------------------------------------------------------------------


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as float32 [N,16,16,3] in [0, 1], and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = np.kron(digits.images / 16.0, np.ones((1, SIZE // 8, SIZE // 8)))
    return np.repeat(gray[..., None], 3, axis=-1).astype(np.float32), digits.target


def _trained_model(images: np.ndarray, labels: np.ndarray) -> Any:
    import keras
    from keras import layers

    keras.utils.set_random_seed(7)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_a")(inputs)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_b")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(10, name="head")(x)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(images, labels, epochs=8, batch_size=32, verbose=0)  # about 75 % held out
    return model


def _clone(model: Any) -> Any:
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _rescaled(model: Any) -> Any:
    """The same function with conv_a's channel CHANNEL RESCALE x wider (exact through ReLU and
    max-pool: both commute with multiplying a channel by a positive number)."""
    copy = _clone(model)
    kernel, bias = copy.get_layer("conv_a").get_weights()
    kernel[..., CHANNEL] *= RESCALE
    bias[CHANNEL] *= RESCALE
    copy.get_layer("conv_a").set_weights([kernel, bias])
    kernel, bias = copy.get_layer("conv_b").get_weights()
    kernel[:, :, CHANNEL, :] /= RESCALE
    copy.get_layer("conv_b").set_weights([kernel, bias])
    return copy


def _one_huge_weight(model: Any) -> Any:
    copy = _clone(model)
    kernel, bias = copy.get_layer("conv_b").get_weights()
    kernel[1, 1, 0, 3] = 100.0 * float(np.abs(kernel[..., 3]).max())
    copy.get_layer("conv_b").set_weights([kernel, bias])
    return copy


def _convert(model: Any, folder: Path, calibration: np.ndarray | None) -> bytes:
    """float32 (no calibration) or full-int8 with float I/O, from a SavedModel folder."""
    import tensorflow as tf

    model.export(str(folder), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(folder))
    if calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return bytes(converter.convert())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("causes")
    images, labels = _digits()
    model = _trained_model(images[:1000], labels[:1000])
    calibration = images[1000 : 1000 + CALIBRATION]
    evaluated = images[1200 : 1200 + EVALUATED]
    rescaled = _rescaled(model)
    huge = _one_huge_weight(model)
    out: dict[str, Any] = {"calibration": calibration, "evaluated": evaluated}
    for name, m in (("original", model), ("rescaled", rescaled), ("huge", huge)):
        out[name] = m
        out[f"{name}_float"] = _convert(m, root / f"{name}_float", None)
        out[f"{name}_int8"] = _convert(m, root / f"{name}_int8", calibration)
    # Calibrated on images at 30 % brightness, evaluated on the real ones.
    out["dark_int8"] = _convert(model, root / "dark_int8", calibration * 0.3)
    return out


def _of(found: Any, kind: str) -> list[Any]:
    return [c for c in found.causes if c.cause == kind]


# -- end to end ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_rescaling_is_exact_in_float(built: dict[str, Any]) -> None:
    """The outlier model is the same function: a wrong construction would test nothing."""
    x = built["evaluated"]
    original = np.asarray(built["original"](x))
    rescaled = np.asarray(built["rescaled"](x))
    assert np.abs(original - rescaled).max() < 1e-3 * max(1.0, float(np.abs(original).max()))


@pytest.mark.slow
def test_an_outlier_channel_is_named_at_the_rescaled_pair_with_its_ratio(
    built: dict[str, Any],
) -> None:
    import keras

    found = find_causes(
        built["rescaled_float"],
        built["rescaled_int8"],
        calibration=built["calibration"],
        evaluated=built["evaluated"],
    )
    outliers = _of(found, "outlier_channel")
    assert [c.layer for c in outliers] == ["conv_a"], [c.to_dict() for c in found.causes]
    cause = outliers[0]
    assert cause.layers == ("conv_a", "pool", "conv_b")  # through the max-pool to its reader
    assert cause.evidence["outlier_channels"] == [CHANNEL]
    assert cause.fixes[0] == "equalize" and cause.evidence["equalizable"] is True
    assert list(cause.fixes) == [f for f in FIX_ORDER if f in cause.fixes]

    # Independently: conv_a's output (ReLU applied) from Keras, per-channel max |a|.
    sub = keras.Model(built["rescaled"].input, built["rescaled"].get_layer("conv_a").output)
    acts = np.asarray(sub(built["calibration"])).reshape(-1, 16)
    channel_max = np.abs(acts).max(axis=0)
    expected = channel_max.max() / np.median(channel_max[channel_max > 0])
    assert cause.evidence["range_ratio"] == pytest.approx(expected, rel=0.10)
    assert expected > 100  # the rescaling really made an outlier

    # The words carry the same numbers.
    assert cause.words.startswith("conv_a → pool → conv_b: one channel spans")
    assert f"{cause.evidence['range_ratio']:.0f}×" in cause.words
    assert "other 15 channels" in cause.words
    d = cause.to_dict()
    assert set(d) >= {"layer", "cause", "evidence", "fixes", "words"}
    report = json.loads(json.dumps(found.to_dict()))  # report.json-ready as it is
    assert report["causes"][0]["cause"] == "outlier_channel"
    assert report["causes_measured_on"]["calibration_images"] == CALIBRATION


@pytest.mark.slow
def test_the_original_model_has_no_outlier_channel(built: dict[str, Any]) -> None:
    found = find_causes(
        built["original_float"],
        built["original_int8"],
        calibration=built["calibration"],
        evaluated=built["evaluated"],
    )
    assert not _of(found, "outlier_channel"), [c.to_dict() for c in found.causes]
    conv_a = [s for s in found.activations if s.layer == "conv_a"]
    assert conv_a and conv_a[0].range_ratio is not None
    assert conv_a[0].range_ratio < ACTIVATION_RANGE_RATIO


@pytest.mark.slow
def test_one_huge_weight_names_weight_outliers(built: dict[str, Any]) -> None:
    found = find_causes(
        built["huge_float"],
        built["huge_int8"],
        calibration=built["calibration"],
        evaluated=built["evaluated"],
    )
    weights = _of(found, "weight_outliers")
    assert [c.layer for c in weights] == ["conv_b"], [c.to_dict() for c in found.causes]
    assert weights[0].evidence["worst_output_channel"] == 3
    # The rescaled model's conv_a has one channel 400x wider, but per-channel quantization gives
    # it its own scale: that is not a weight outlier.
    rescaled = find_causes(
        built["rescaled_float"],
        built["rescaled_int8"],
        calibration=built["calibration"],
        evaluated=built["evaluated"],
    )
    assert not _of(rescaled, "weight_outliers")


@pytest.mark.slow
def test_brighter_images_than_calibration_name_clipping_where_it_starts(
    built: dict[str, Any],
) -> None:
    found = find_causes(
        built["original_float"],
        built["dark_int8"],
        calibration=built["calibration"] * 0.3,
        evaluated=built["evaluated"],
    )
    clipping = _of(found, "clipping")
    assert [c.layer for c in clipping] == [INPUT_LAYER], [c.to_dict() for c in found.causes]
    # Independently: the share of input values above the calibration maximum (the int8 input
    # range ends there, up to half a step).
    x = built["evaluated"]
    edge = float((built["calibration"] * 0.3).max())
    expected = float(np.mean(x > edge * 1.01))
    assert clipping[0].evidence["clip_rate"] == pytest.approx(expected, rel=0.10)
    # The same model evaluated on images like its calibration's does not clip.
    fine = find_causes(
        built["original_float"],
        built["original_int8"],
        calibration=built["calibration"],
        evaluated=built["evaluated"],
    )
    assert not _of(fine, "clipping")


@pytest.mark.slow
def test_images_the_model_cannot_take_give_one_line_that_says_what_to_do(
    built: dict[str, Any],
) -> None:
    wrong = np.zeros((3, SIZE + 1, SIZE, 3), dtype=np.float32)
    with pytest.raises(ConversionFailed) as caught:
        find_causes(
            built["original_float"], built["original_int8"], calibration=wrong, evaluated=wrong
        )
    message = str(caught.value)
    assert "\n" not in message and "preprocessed to the model's input shape" in message
    # No images at all: no signal to name a cause from, and no crash.
    none = np.zeros((0, SIZE, SIZE, 3), dtype=np.float32)
    found = find_causes(
        built["original_float"], built["original_int8"], calibration=none, evaluated=none
    )
    assert found.causes == () and found.evaluated_images == 0


# -- the naming rules, on crafted signals ----------------------------------------------------------


def _act(**changes: Any) -> ActivationSignals:
    base: dict[str, Any] = {
        "tensor": "model/conv2d_3/Relu",
        "layer": "conv2d_3",
        "op": "CONV_2D",
        "chain": ("conv2d_3", "conv2d_4"),
        "equalizable": True,
        "channels": 16,
        "range_ratio": 2.0,
        "outlier_channels": (),
        "used_levels": 120.0,
        "grid_levels": 256,
        "scale": 0.05,
        "zero_point": -128,
        "calibration_images": 50,
        "clip_rate": 0.0,
        "calibration_clip_rate": 0.0,
        "max_over_range": None,
        "clipped_images": 0.0,
        "evaluated_images": 50,
        "input_clip_rate": 0.0,
    }
    base.update(changes)
    return ActivationSignals(**base)


def _weights(**changes: Any) -> WeightSignals:
    base: dict[str, Any] = {
        "tensor": "model/conv2d_4/Relu",
        "layer": "conv2d_4",
        "op": "CONV_2D",
        "weights": 4608,
        "output_channels": 32,
        "range_ratio": 1.5,
        "kurtosis": 0.5,
        "per_channel": True,
        "worst_group": 7,
        "group_size": 144,
        "group_spread": 5.0,
        "group_kurtosis": 0.3,
    }
    base.update(changes)
    return WeightSignals(**base)


def test_healthy_signals_name_nothing() -> None:
    assert name_causes([_act()], [_weights()]) == []


def test_an_outlier_ratio_names_the_pair_and_says_how_much_grid_is_left() -> None:
    (cause,) = name_causes([_act(range_ratio=400.0, outlier_channels=(5,), used_levels=0.64)], [])
    assert cause.cause == "outlier_channel" and cause.layers == ("conv2d_3", "conv2d_4")
    assert cause.words == (
        "conv2d_3 → conv2d_4: one channel spans 400× the range of the others; "
        "int8 keeps about 0.25 % of the grid for the other 15 channels"
    )
    assert cause.fixes == ("equalize", "int16_activations", "weight_only", "keep_float")
    # Below the threshold it is not named; without an exact path there is no equalize rung.
    assert name_causes([_act(range_ratio=ACTIVATION_RANGE_RATIO * 0.9)], []) == []
    (unpaired,) = name_causes([_act(range_ratio=50.0, equalizable=False, used_levels=5.0)], [])
    assert "equalize" not in unpaired.fixes
    # With 16-bit activations the same ratio leaves the other channels 164 levels: no cause.
    assert name_causes([_act(range_ratio=400.0, grid_levels=65536, used_levels=164.0)], []) == []
    # A max-pool after the outlier conv carries the same outlier: named once, at the conv.
    assert name_causes([_act(op="MAX_POOL_2D", range_ratio=400.0)], []) == []


def test_an_outlier_channel_wins_over_the_collapse_it_causes() -> None:
    (cause,) = name_causes([_act(range_ratio=400.0, used_levels=0.5)], [])
    assert cause.cause == "outlier_channel"
    (collapse,) = name_causes([_act(range_ratio=3.0, used_levels=COLLAPSE_LEVELS / 2)], [])
    assert collapse.cause == "range_collapse"
    assert collapse.fixes == ("int16_activations", "weight_only", "keep_float")


def test_clipping_is_named_where_it_starts_not_where_it_propagates() -> None:
    start = _act(
        layer="conv_a", clip_rate=0.05, max_over_range=2.0, clipped_images=0.8, input_clip_rate=0
    )
    after = _act(
        layer="conv_b", clip_rate=0.04, max_over_range=2.0, clipped_images=0.8, input_clip_rate=0.05
    )
    (cause,) = name_causes([start, after], [])
    assert cause.cause == "clipping" and cause.layer == "conv_a"
    assert cause.words.startswith("conv_a: 5 % of its values on the evaluated images fall outside")
    assert name_causes([_act(clip_rate=1e-5, max_over_range=3.0, clipped_images=0.8)], []) == []
    # A few values a little beyond the edge, or on a few images (a new image's extremes), are
    # not clipping; nor is a softmax output reaching 1.0 (its range is fixed by the op).
    assert name_causes([_act(clip_rate=0.05, max_over_range=1.05, clipped_images=0.8)], []) == []
    assert name_causes([_act(clip_rate=0.05, max_over_range=2.0, clipped_images=0.03)], []) == []
    softmax = _act(op="SOFTMAX", clip_rate=0.05, max_over_range=2.0, clipped_images=0.8)
    assert name_causes([softmax], []) == []


def test_weight_outliers_need_a_large_spread_in_a_group_big_enough_to_judge() -> None:
    (cause,) = name_causes([], [_weights(group_spread=100.0, group_kurtosis=140.0)])
    assert cause.cause == "weight_outliers" and cause.layer == "conv2d_4"
    assert "output channel 7" in cause.words and "kurtosis 140" in cause.words
    # Bias correction is offered on a measured biased error only (core.engine.biased_error).
    assert cause.fixes == ("keep_float",)
    assert name_causes([], [_weights(group_spread=None, worst_group=None, group_size=9)]) == []


def test_preprocessing_and_runtime_causes_come_from_the_callers_numbers() -> None:
    check = PresetCheck("unit", 62.0, "tf", 91.5)
    (cause,) = name_causes([], [], preset=check)
    assert cause.cause == "preprocessing" and cause.evidence["gap_points"] == pytest.approx(29.5)
    assert cause.fixes == ()
    assert name_causes([], [], preset=PresetCheck("unit", 90.0, "tf", 92.0)) == []
    assert name_causes([], [], preset=PresetCheck("tf", 90.0, "tf", 90.0)) == []
    (runtime,) = name_causes([], [], runtimes={"xnnpack": 96.1, "reference": 99.8})
    assert runtime.cause == "runtime_only" and runtime.evidence["worst"] == "xnnpack"
    assert name_causes([], [], runtimes={"xnnpack": 99.5, "reference": 99.8}) == []


def test_suspects_keep_their_causes_and_name_diffuse_when_none_explains_them() -> None:
    outlier = _act(range_ratio=400.0, outlier_channels=(5,), used_levels=0.64)
    elsewhere = _act(layer="dense", chain=("dense",), range_ratio=300.0, tensor="model/dense/x")
    kept = name_causes([outlier, elsewhere], [], suspects=["conv2d_4"])
    assert [c.layer for c in kept] == ["conv2d_3"]  # the suspect reads the outlier tensor
    (diffuse,) = name_causes([_act()], [_weights()], suspects=["block_9", "block_12"])
    assert diffuse.cause == "diffuse" and diffuse.layers == ("block_9", "block_12")
    assert diffuse.fixes == ("int16_activations", "keep_float")


def test_a_cause_line_names_its_layer_once() -> None:
    """The words name their layer first; the CLI and report.html line once said it twice
    ("conv1: conv1: 6 of 16 channels …"). Words that do not (an older report's) keep the layer
    in front, and conv1's words are not taken for conv10's."""
    from core.reporting.sections.diagnosis import RootCause, VariantCauses

    def cause(layer: str, words: str) -> RootCause:
        return RootCause(layer=layer, layers=(layer,), cause="biased_error", words=words)

    causes = VariantCauses(
        causes=(
            cause("conv1", "conv1: 6 of 16 channels are shifted down"),
            cause("conv2", "conv2 → pool2 → conv3: one channel spans 935× the range"),
            cause("conv1", "conv10: a neighbour's words"),
            cause("dense", "the error is spread across layers"),
        )
    )
    assert causes.lines() == [
        "conv1: 6 of 16 channels are shifted down",
        "conv2 → pool2 → conv3: one channel spans 935× the range",
        "conv1: conv10: a neighbour's words",
        "dense: the error is spread across layers",
    ]
