"""Reference-model loading: every odd model in RELIABILITY.md gets one clear line, good ones load."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.engine.models import load_reference
from core.errors import UnsafeModel, UnsupportedModel

pytestmark = pytest.mark.slow  # builds real Keras models and SavedModels


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _image_batch(n: int, size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Small models with one odd trait each, built once for the module."""
    import keras
    import tensorflow as tf
    from keras import layers

    from tests.core.conftest import build_tiny_model

    root = tmp_path_factory.mktemp("odd_models")
    paths: dict[str, Any] = {}

    (root / "random.keras").write_bytes(np.random.default_rng(0).bytes(4096))
    paths["random"] = root / "random.keras"

    # A custom layer that is deliberately not registered: only this module knows the class.
    class Doubler(layers.Layer):
        def call(self, x: Any) -> Any:
            return x * 2.0

    inp = keras.Input((8, 8, 3), name="image")
    x = layers.GlobalAveragePooling2D()(Doubler()(inp))
    keras.Model(inp, layers.Dense(3, activation="softmax")(x)).save(root / "custom.keras")
    paths["custom"] = root / "custom.keras"

    tiny = build_tiny_model(seed=3)
    tiny.save(root / "tiny.h5")
    paths["h5"] = root / "tiny.h5"
    paths["h5_model"] = tiny

    a, b = keras.Input((8, 8, 3), name="left"), keras.Input((8, 8, 3), name="right")
    x = layers.GlobalAveragePooling2D()(layers.Add()([a, b]))
    keras.Model([a, b], layers.Dense(3)(x)).save(root / "two_inputs.keras")
    paths["two_inputs"] = root / "two_inputs.keras"

    flat = keras.Input((10,), name="features")
    keras.Model(flat, layers.Dense(3, activation="softmax")(flat)).save(root / "tabular.keras")
    paths["tabular"] = root / "tabular.keras"

    free = keras.Input((None, None, 3), name="image")
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3)(free))
    any_size = keras.Model(free, layers.Dense(3, activation="softmax")(x))
    any_size.save(root / "any_size.keras")
    paths["any_size"] = root / "any_size.keras"
    paths["any_size_model"] = any_size

    inp = keras.Input((8, 8, 3), name="image")
    x = layers.GlobalAveragePooling2D()(inp)
    heads = [
        layers.Dense(3, activation="softmax", name="species")(x),
        layers.Dense(2, name="box")(x),
    ]
    keras.Model(inp, heads).save(root / "multi_output.keras")
    paths["multi_output"] = root / "multi_output.keras"

    module = tf.Module()
    module.v = tf.Variable(1.0)
    tf.saved_model.save(module, str(root / "no_signature"))
    paths["no_signature"] = root / "no_signature"

    class TwoHeads(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal((3, 4), seed=(1, 2)))

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
        def probs(self, x: Any) -> Any:
            return {"scores": tf.nn.softmax(tf.reduce_mean(x, axis=[1, 2]) @ self.w)}

        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32)])
        def logits(self, x: Any) -> Any:
            return {"scores": tf.reduce_mean(x, axis=[1, 2]) @ self.w}

    two = TwoHeads()
    tf.saved_model.save(
        two, str(root / "two_signatures"), signatures={"probs": two.probs, "logits": two.logits}
    )
    paths["two_signatures"] = root / "two_signatures"
    paths["two_signatures_w"] = two.w.numpy()
    return paths


def test_random_bytes_named_keras_is_refused(odd_models: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedModel) as info:
        load_reference(odd_models["random"])
    assert str(info.value) == (
        "random.keras is not a valid .keras file (it is not a zip archive); re-save the model "
        "with model.save('model.keras')"
    )


@pytest.mark.parametrize("trusted", [False, True])
def test_unregistered_custom_layer_names_the_class(
    odd_models: dict[str, Any], trusted: bool
) -> None:
    # Trusted mode cannot help either: Keras imports classes only from its own packages.
    with pytest.raises(UnsupportedModel) as info:
        load_reference(odd_models["custom"], trusted=trusted)
    assert isinstance(info.value, UnsafeModel) is not trusted
    assert str(info.value) == (
        "custom.keras needs the custom object 'Doubler', which is not registered and QuantLens "
        "does not import model code; export the model as a SavedModel (model.export(dir)) or "
        "rebuild it with built-in layers"
    )


def test_h5_is_refused_in_safe_mode_and_loads_when_trusted(odd_models: dict[str, Any]) -> None:
    with pytest.raises(UnsafeModel) as info:
        load_reference(odd_models["h5"])
    assert str(info.value) == (
        "tiny.h5 is a legacy HDF5 model, which cannot be loaded in safe mode; re-save it as "
        ".keras (model.save('model.keras')) or enable trusted mode"
    )
    # The message offers trusted mode, so trusted mode must really load it.
    model = load_reference(odd_models["h5"], trusted=True)
    batch = _image_batch(3, 16)
    expected = np.asarray(odd_models["h5_model"](batch, training=False))
    np.testing.assert_allclose(model.predict(batch), expected, rtol=1e-5, atol=1e-6)
    assert model.signature.format == "keras"


def test_saved_model_without_signature_is_refused(odd_models: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedModel) as info:
        load_reference(odd_models["no_signature"])
    assert str(info.value) == (
        "no_signature has no serving signature; re-export it with model.export(dir) or "
        "tf.saved_model.save(model, dir, signatures=...)"
    )


def test_several_signatures_none_default_lists_the_choices(odd_models: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedModel) as info:
        load_reference(odd_models["two_signatures"])
    assert str(info.value) == (
        "two_signatures has 2 signatures and none is serving_default; choose one of logits, "
        "probs (--signature NAME)"
    )
    chosen = load_reference(odd_models["two_signatures"], signature_key="logits")
    assert chosen.signature.signature_key == "logits"
    assert chosen.signature.outputs_probabilities is False
    batch = _image_batch(2, 8)
    expected = batch.mean(axis=(1, 2)) @ odd_models["two_signatures_w"]
    np.testing.assert_allclose(chosen.predict(batch), expected, rtol=1e-5, atol=1e-6)


def test_two_inputs_are_refused(odd_models: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedModel) as info:
        load_reference(odd_models["two_inputs"])
    assert str(info.value) == (
        "two_inputs.keras has 2 inputs; QuantLens compares single-input image classifiers"
    )


def test_non_image_input_is_refused(odd_models: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedModel) as info:
        load_reference(odd_models["tabular"])
    assert str(info.value) == (
        "input 'features' of tabular.keras has shape [None, 10], not an image batch "
        "[N, H, W, C]; QuantLens compares image classifiers"
    )


def test_multi_output_model_is_refused_naming_its_heads(odd_models: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedModel) as info:
        load_reference(odd_models["multi_output"])
    assert str(info.value) == (
        "multi_output.keras has 2 outputs (species, box); QuantLens compares single-output "
        "classifiers: build a model with one output"
    )


def test_none_batch_dimension_serves_any_batch(tiny_models: dict[str, Path]) -> None:
    import keras

    model = load_reference(tiny_models["keras"])
    assert model.signature.input_shape == (None, 16, 16, 3)
    direct = keras.saving.load_model(tiny_models["keras"])
    for n in (1, 5):
        batch = _image_batch(n, 16, seed=n)
        expected = np.asarray(direct(batch, training=False))
        np.testing.assert_allclose(model.predict(batch), expected, rtol=1e-5, atol=1e-6)


def test_none_spatial_dimensions_ask_for_the_size(odd_models: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedModel) as info:
        load_reference(odd_models["any_size"])
    assert str(info.value) == (
        "any_size.keras accepts any image size ([None, None, None, 3]); give the size to "
        "evaluate at with --input-size HxW (e.g. 224x224)"
    )
    model = load_reference(odd_models["any_size"], input_size=(12, 10))
    sig = model.signature
    assert (sig.height, sig.width, sig.channels) == (12, 10, 3)
    assert sig.input_shape == (None, None, None, 3)
    batch = np.random.default_rng(1).uniform(-1, 1, (2, 12, 10, 3)).astype(np.float32)
    expected = np.asarray(odd_models["any_size_model"](batch, training=False))
    np.testing.assert_allclose(model.predict(batch), expected, rtol=1e-5, atol=1e-6)
    # The traced function is fixed to the size asked for, so it converts to a fixed-shape model.
    assert list(model.concrete_function.inputs[0].shape) == [None, 12, 10, 3]


def test_logits_output_is_detected(tiny_models: dict[str, Path]) -> None:
    logits = load_reference(tiny_models["logits_saved_model"])
    probs = load_reference(tiny_models["saved_model"])
    assert logits.signature.outputs_probabilities is False
    assert probs.signature.outputs_probabilities is True
    raw = logits.predict(_image_batch(4, 16))
    assert (raw < 0).any() or not np.allclose(raw.sum(axis=1), 1.0, atol=1e-3)


def test_logits_model_report_applies_softmax(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    """End to end (the worker's job code, in-process): the report says softmax was applied."""
    from core.engine.pipeline import run_job
    from core.inputs import rundir
    from core.inputs.datasets import load_dataset
    from core.inputs.images import decode_image
    from core.inputs.presets import apply_preset
    from core.types import JobSpec, Preset

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job = JobSpec(
        model_path=str(tiny_models["logits_saved_model"]),
        data_path=str(tiny_data),
        variants=("float32",),
        preset=Preset.MOBILENET_V2,
        latency_runs=2,
        warmup_runs=1,
    )
    run_job(job, run_dir, progress=lambda _event: None, cache_dir=None)
    report = rundir.read_json(run_dir / rundir.REPORT)
    assert report["reference"]["outputs_probabilities"] is False
    assert report["reference"]["softmax_applied"] is True
    (variant,) = report["variants"]
    assert variant["status"] == "done"
    assert variant["softmax_applied"] is True

    # Independently: softmax of the model's raw logits on the same decoded images.
    samples = load_dataset(tiny_data).samples
    pixels = np.stack([decode_image(s.path, height=16, width=16, channels=3) for s in samples])
    raw = load_reference(tiny_models["logits_saved_model"]).predict(
        apply_preset(pixels, Preset.MOBILENET_V2)
    )
    stored = np.load(run_dir / rundir.REFERENCE_PROBS)
    np.testing.assert_allclose(stored, _softmax(raw.astype(np.float64)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stored.sum(axis=1), 1.0, atol=1e-5)
    leftovers = sorted(p.name for p in run_dir.iterdir() if p.name.startswith("."))
    assert leftovers == []


def test_missing_model_path(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModel) as info:
        load_reference(tmp_path / "nope.keras")
    assert re.fullmatch(
        r"model path .*nope\.keras does not exist; give a SavedModel folder or a \.keras file",
        str(info.value),
    )
    assert not os.path.exists(tmp_path / "nope.keras")
