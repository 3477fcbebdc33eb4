"""A conversion that outputs NaN is never a quiet 0 %: another route is taken, or it fails by name."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.engine.backends import tflite_from_reference
from core.engine.convert import SAVED_MODEL_DIR, TRACED_FUNCTION, nonfinite_outputs
from core.engine.models import load_reference
from core.errors import ConversionFailed
from core.types import VariantSpec

pytestmark = pytest.mark.slow  # real TensorFlow conversions


def _keras_through_plain_module(path: Path) -> None:
    """The reproduction: a Keras 3 model wrapped in a tf.Module, saved with tf.saved_model.save."""
    import tensorflow as tf

    from tests.core.conftest import TINY_SIZE, build_tiny_model

    class Wrapper(tf.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None, TINY_SIZE, TINY_SIZE, 3], tf.float32)])
        def serve(self, x: Any) -> Any:
            return {"scores": self.model(x, training=False)}

    wrapper = Wrapper(build_tiny_model(seed=4))
    tf.saved_model.save(wrapper, str(path), signatures={"serving_default": wrapper.serve})


@pytest.fixture(scope="module")
def wrapped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wrapped") / "keras_in_module"
    _keras_through_plain_module(path)
    return path


def _probe(n: int = 8) -> np.ndarray:
    return np.random.default_rng(5).uniform(-1, 1, (n, 16, 16, 3)).astype(np.float32)


def test_the_saved_model_folder_route_really_loses_the_variables(wrapped: Path) -> None:
    """The premise, checked on the real converter: straight from the folder, every output is NaN."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(wrapped))
    tflite = converter.convert()
    assert nonfinite_outputs(tflite, _probe(), expected=np.ones(8, dtype=bool)) == 8


def test_a_nan_route_falls_back_to_the_traced_function(wrapped: Path, tmp_path: Path) -> None:
    model = load_reference(wrapped)
    cache = tmp_path / "cache"
    result = tflite_from_reference(
        model,
        VariantSpec.parse("float32"),
        model_sha256="x" * 64,
        probe=_probe(),
        cache_dir=cache,
    )
    assert result.route == TRACED_FUNCTION
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=result.tflite)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    images = _probe(4)
    rows = []
    for image in images:
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0])
    np.testing.assert_allclose(np.stack(rows), model.predict(images), atol=1e-5)
    # Only the bytes that passed are cached; the next run takes them, by the same route.
    assert len(list(cache.glob("*.tflite"))) == 1
    again = tflite_from_reference(
        model,
        VariantSpec.parse("float32"),
        model_sha256="x" * 64,
        probe=_probe(),
        cache_dir=cache,
    )
    assert (again.cached, again.route, again.tflite) == (True, TRACED_FUNCTION, result.tflite)


def test_a_healthy_saved_model_keeps_the_folder_route(tiny_models: dict[str, Path]) -> None:
    model = load_reference(tiny_models["saved_model"])
    result = tflite_from_reference(
        model, VariantSpec.parse("float16"), model_sha256="y" * 64, probe=_probe()
    )
    assert result.route == SAVED_MODEL_DIR


def test_no_route_with_finite_outputs_fails_with_one_line(tiny_models: dict[str, Path]) -> None:
    """Handed the Keras model itself as the variables' owner (QuantLens's own old mistake), the
    converter keeps uninitialised variables: the only route for a .keras file outputs NaN."""
    model = load_reference(tiny_models["keras"])
    broken = dataclasses.replace(model, trackable=model.trackable.keras_model)
    with pytest.raises(ConversionFailed) as info:
        tflite_from_reference(
            broken, VariantSpec.parse("float32"), model_sha256="z" * 64, probe=_probe()
        )
    assert str(info.value) == (
        "float32: the converted model outputs NaN/Inf on 8 of 8 probe images where the "
        "original's outputs are finite (tried traced_function); the converter probably lost the "
        "model's variables: re-export it with model.export(dir) or save it as .keras"
    )


def _run(model_path: Path, data: Path, run_dir: Path, variants: tuple[str, ...]) -> dict[str, Any]:
    from core.engine.pipeline import run_job
    from core.inputs import rundir
    from core.types import JobSpec, Preset

    run_dir.mkdir()
    job = JobSpec(
        model_path=str(model_path),
        data_path=str(data),
        variants=variants,
        preset=Preset.MOBILENET_V2,
        latency_runs=2,
        warmup_runs=1,
    )
    run_job(job, run_dir, progress=lambda _event: None, cache_dir=None)
    report: dict[str, Any] = rundir.read_json(run_dir / rundir.REPORT)
    return report


def test_the_reproduction_through_the_job_is_not_a_quiet_zero(
    wrapped: Path, tiny_data: Path, tmp_path: Path
) -> None:
    report = _run(wrapped, tiny_data, tmp_path / "run", ("float32", "int8"))
    for variant in report["variants"]:
        assert variant["status"] == "done", variant["error"]
        assert variant["conversion_route"] == TRACED_FUNCTION
        assert variant["nan_outputs"] == 0 and variant["warnings"] == []
        # An untrained model's near-ties flip under int8, so judge int8 by |dp|, not top-1.
        assert variant["max_abs_prob_delta"] < 0.05, variant["name"]
    float32 = next(v for v in report["variants"] if v["name"] == "float32")
    assert float32["top1_agreement_pct"] == 100.0
    assert float32["max_abs_prob_delta"] < 1e-5


def _nan_on_bright_images(path: Path, threshold: float) -> None:
    """Probabilities times sqrt(mean - threshold): NaN, in TF and TFLite alike, on dark images."""
    import tensorflow as tf

    class Gated(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal((3, 4), seed=(3, 4)))

        @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32)])
        def serve(self, x: Any) -> Any:
            channels = tf.reduce_mean(x, axis=[1, 2])
            gate = tf.sqrt(tf.reduce_mean(channels, axis=1, keepdims=True) - threshold)
            return {"scores": tf.nn.softmax(channels @ self.w) * gate / gate}

    module = Gated()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})


def test_nan_outputs_on_some_images_are_named_on_the_variant_and_the_cli_table(
    tiny_data: Path, tmp_path: Path
) -> None:
    from core.reporting.report import format_table

    _nan_on_bright_images(tmp_path / "gated", threshold=-0.42)
    report = _run(tmp_path / "gated", tiny_data, tmp_path / "run", ("float32",))
    (variant,) = report["variants"]
    assert variant["status"] == "done", variant["error"]
    tfl = np.load(tmp_path / "run" / "float32.probs.npy")
    bad = int((~np.isfinite(tfl).all(axis=1)).sum())
    n = len(tfl)
    assert 0 < bad < n  # the data set really has images on both sides of the gate
    assert variant["nan_outputs"] == bad
    line = (
        f"outputs NaN/Inf on {bad} of {n} images; they count as disagreements and are left "
        "out of the probability deltas"
    )
    assert variant["warnings"] == [f"the converted model {line}"]
    assert f"the original model {line}" in report["warnings"]
    table = format_table(report).splitlines()
    assert f"warning: float32: the converted model {line}" in table
    assert f"warning: the original model {line}" in table
