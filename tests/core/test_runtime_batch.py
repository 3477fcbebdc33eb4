"""Batched evaluation gives the numbers batch 1 gives, and falls back to batch 1 when it must.

The batch-1 outputs are computed here with the bare `ai_edge_litert` interpreter and a few lines
of numpy (quantize with the input tensor's own scale and zero point, dequantize the output), not
with TFLiteRunner, so the runner's batched path is checked against something it did not make.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.engine.runtime import EVALUATION_BATCH, TFLiteRunner, evaluation_batch

# Both backends: the converter's modes, and the LiteRT Quantizer's recipes (`_q`).
VARIANTS = (
    "float32",
    "float16",
    "dynamic",
    "int8",
    "int8-uint8",
    "int8-float32",
    "int16x8",
    "int8_q",
    "dynamic_q",
    "int4w_q",
)
# Integer-only graphs with integer I/O accumulate in int32 and requantize per element: the
# batch size cannot change a single bit. Float kernels (and the float ends of int8-float32) may
# tile a batch differently, another summation order, so they are equal up to float32 rounding.
EXACT = {"int8", "int8-uint8", "int16x8", "int8_q"}
FLOAT_ATOL = 1e-5


@pytest.fixture(scope="module")
def converted(tiny_models: dict[str, Path], tiny_data: Path) -> dict[str, Any]:
    """The tiny model in every variant above, plus its 24 images (one full batch and a tail)."""
    from core.engine.backends import tflite_from_reference
    from core.engine.models import load_reference, model_sha256
    from core.inputs.datasets import load_dataset
    from core.inputs.images import decode_image
    from core.inputs.presets import apply_preset
    from core.types import Preset, VariantSpec

    model = load_reference(tiny_models["keras"])
    samples = load_dataset(tiny_data).samples
    pixels = np.stack([decode_image(s.path, height=16, width=16, channels=3) for s in samples])
    images = apply_preset(pixels, Preset.MOBILENET_V2).astype(np.float32)
    sha = model_sha256(tiny_models["keras"])
    out: dict[str, Any] = {"images": images}
    for variant in VARIANTS:
        out[variant] = tflite_from_reference(
            model, VariantSpec.parse(variant), model_sha256=sha, calibration=images
        ).tflite
    return out


def _one_by_one(tflite: bytes, images: np.ndarray) -> np.ndarray:
    """Float outputs [N, C], one invoke per image, with the bare LiteRT interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite, num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for image in images:
        x = image[None]
        if inp["dtype"] != np.float32:
            # Round half away from zero, in float64, as the runner's contract says.
            scale, zero_point = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            scaled = x.astype(np.float64) / scale
            q = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) + zero_point
            x = np.clip(q, info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])[0]
        if out["dtype"] != np.float32:
            scale, zero_point = out["quantization"]
            y = (y.astype(np.int64) - zero_point) * np.float64(scale)
        rows.append(np.asarray(y, dtype=np.float32))
    return np.stack(rows)


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_batched_outputs_equal_batch_one(converted: dict[str, Any], variant: str) -> None:
    images = converted["images"]
    assert len(images) % EVALUATION_BATCH != 0  # the tail re-prepares at another size
    runner = TFLiteRunner(converted[variant], threads=1, batch=EVALUATION_BATCH)
    assert runner.batch == EVALUATION_BATCH  # the converter leaves the batch dimension open
    got = runner.infer(images)
    want = _one_by_one(converted[variant], images)
    assert got.shape == want.shape == (len(images), 4)
    if variant in EXACT:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=FLOAT_ATOL)


def _fixed_batch_tflite() -> bytes:
    """A tiny classifier converted with its batch dimension fixed at 1."""
    import keras
    import tensorflow as tf
    from keras import layers

    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 3), batch_size=1)
    x = layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = layers.Reshape((-1,))(x)
    outputs = layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    return bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())


@pytest.mark.slow
def test_a_fixed_batch_model_runs_one_image_per_invoke() -> None:
    tflite = _fixed_batch_tflite()
    images = np.random.default_rng(0).normal(size=(5, 8, 8, 3)).astype(np.float32)
    runner = TFLiteRunner(tflite, threads=1, batch=EVALUATION_BATCH)
    assert runner.batch == 1
    np.testing.assert_array_equal(runner.infer(images), _one_by_one(tflite, images))


@pytest.mark.slow
def test_latency_is_never_timed_on_a_batched_runner(converted: dict[str, Any]) -> None:
    runner = TFLiteRunner(converted["float32"], threads=1, batch=EVALUATION_BATCH)
    with pytest.raises(ValueError, match="batch 1"):
        runner.timed_invoke(converted["images"][0])


def test_small_images_run_in_batches_and_large_ones_one_at_a_time() -> None:
    """Batching is chosen by image size: 224x224 MobileNets ran slower in batches here."""
    assert evaluation_batch(16 * 16 * 3) == EVALUATION_BATCH
    assert evaluation_batch(32 * 32 * 3) == EVALUATION_BATCH
    assert evaluation_batch(96 * 96 * 3) == 2
    assert evaluation_batch(224 * 224 * 3) == 1
