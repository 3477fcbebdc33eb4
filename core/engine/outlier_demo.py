"""A demo model whose int8 collapses for a real, documented reason: one outlier activation channel.

The construction (function-preserving, so the float model's answers do not change):

1. Train a small conv net, conv1 -> max-pool -> conv2 -> ReLU -> max-pool -> conv3 -> ReLU ->
   global average pool -> dense, on the demo's handwritten digits.
2. Pick the channel c of conv2 with the largest activation on the training images (a live
   channel, so the outlier is real, not a dead channel scaled by nothing).
3. Multiply conv2's output channel c (its kernel slice and its bias) by k = 400 and divide
   conv3's input-channel-c weights by k. ReLU and max-pool between them are positively
   homogeneous per channel (relu(k x) = k relu(x), max(k x) = k max(x) for k > 0), so conv3 sees
   k times the activation through 1/k times the weights: the same outputs, up to float rounding.

The activation between conv2 and conv3 now has one channel spanning about 400x the range of the
others. Full-integer quantization gives that tensor one scale (per-tensor activations), set by
the outlier, so the other 31 channels keep about 1/400 of the int8 grid: 256 / 400, less than
one step, and most of their values round to zero. Top-1 agreement with the float model
collapses: measured on the demo's 628 held-out digits, int8 agrees on 9.7 % (float32 TFLite
100 %), and on 99.5 % after equalization, at the same 21,512 bytes. This is the failure MobileNet- and EfficientNet-style
networks show in practice (Nagel et al. 2019), made reproducible and explained. Cross-layer
equalization (core.engine.equalize) undoes it exactly.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from core.engine.demo_models import SEED, load_split
from core.engine.equalize import rescale_channels
from core.inputs.demo_paths import OUTLIER_FOLDER, outlier_demo_paths

OUTLIER_FACTOR = 400.0
OUTLIER_FIRST = "conv2"  # the layer whose output channel is blown up
OUTLIER_SECOND = "conv3"  # the layer that absorbs it
OUTLIER_EPOCHS = 10
# The 8x8 digits decoded at 16x16 (the same decoder and preset as the other demos): two
# max-pools leave 4x4, and training takes seconds rather than a minute.
OUTLIER_INPUT_SIZE = 16
OUTLIER_MIN_ACCURACY = 0.90  # a broken-build guard, not a target


def outlier_net(input_size: int = OUTLIER_INPUT_SIZE, num_classes: int = 10) -> Any:
    """The small conv net of step 1 (ReLU and max-pool only between convs: rescaling is exact)."""
    import keras
    from keras import layers

    inputs = keras.Input((input_size, input_size, 3), name="image")
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D(name="pool1")(x)
    x = layers.Conv2D(32, 3, padding="same", name=OUTLIER_FIRST)(x)
    x = layers.ReLU(name="relu2")(x)
    x = layers.MaxPooling2D(name="pool2")(x)
    x = layers.Conv2D(32, 3, padding="same", name=OUTLIER_SECOND)(x)
    x = layers.ReLU(name="relu3")(x)
    x = layers.GlobalAveragePooling2D(name="pool3")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="digits_outlier")


def train_outlier_base(
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    epochs: int = OUTLIER_EPOCHS,
    seed: int = SEED,
    callbacks: list[Any] | None = None,
) -> Any:
    """Step 1: train `outlier_net` (deterministic: fixed seed, deterministic ops)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    model = outlier_net(int(x_train.shape[1]), int(np.max(y_train)) + 1)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(
        x_train,
        y_train,
        batch_size=32,
        epochs=epochs,
        verbose=0,
        shuffle=True,
        callbacks=callbacks or [],
    )
    return model


def busiest_channel(model: Any, layer: str, images: np.ndarray) -> int:
    """Step 2: the output channel of `layer` with the largest activation on `images`."""
    import keras

    probe = keras.Model(model.inputs[0], model.get_layer(layer).output)
    peak = np.max(np.asarray(probe(images[:256], training=False)), axis=(0, 1, 2))
    return int(np.argmax(peak))


def add_outlier_channel(
    model: Any,
    *,
    first: str = OUTLIER_FIRST,
    second: str = OUTLIER_SECOND,
    channel: int,
    factor: float = OUTLIER_FACTOR,
) -> Any:
    """Step 3: a clone of `model` with `first`'s output channel multiplied by `factor` and
    `second`'s matching input weights divided by it (the same function; see the module doc)."""
    channels = int(model.get_layer(first).kernel.shape[-1])
    scales = np.ones(channels)
    scales[channel] = 1.0 / factor  # equalize's convention: A's channel is divided by the scale
    return rescale_channels(model, first, second, scales)


def outlier_model(
    x_train: np.ndarray,
    y_train: np.ndarray,
    *,
    epochs: int = OUTLIER_EPOCHS,
    callbacks: list[Any] | None = None,
) -> tuple[Any, Any, int]:
    """Steps 1-3: (trained model, its outlier twin, the channel blown up)."""
    base = train_outlier_base(x_train, y_train, epochs=epochs, callbacks=callbacks)
    channel = busiest_channel(base, OUTLIER_FIRST, x_train)
    return base, add_outlier_channel(base, channel=channel), channel


def build_outlier_demo(
    demo_root: Path,
    *,
    progress: Callable[[float, str], None] | None = None,
    epochs: int = OUTLIER_EPOCHS,
    epoch_lock: Callable[[], AbstractContextManager[None]] | None = None,
) -> Path:
    """Train the outlier demo on the small demo's digits into `<demo_root>/outlier/` (a `.keras`
    file, a SavedModel, ACCURACY and NOTE) unless it is there; returns that folder.

    `epoch_lock` is held during each training epoch (the worker passes the host's timing lock,
    so no run's latency is measured while it trains).

    Raises:
        RuntimeError: the small demo's data is missing, or training failed (a bug).
    """
    from core.engine.demo_models import _epoch_progress, _save_and_publish, _staging_folder

    target = demo_root / OUTLIER_FOLDER
    if outlier_demo_paths(root=demo_root).ready():
        return target
    train_csv, test_csv = demo_root / "data" / "train.csv", demo_root / "data" / "digits.csv"
    if not train_csv.is_file():
        raise RuntimeError(f"the small demo's data is missing in {demo_root}; build it first")
    report = progress or (lambda fraction, message: None)
    staging = _staging_folder(demo_root, ".outlier-")
    try:
        report(0.05, "decoding the digits")
        x_train, y_train = load_split(train_csv, OUTLIER_INPUT_SIZE)
        x_test, y_test = load_split(test_csv, OUTLIER_INPUT_SIZE)
        report(0.1, "training the small conv net")
        _base, model, channel = outlier_model(
            x_train,
            y_train,
            epochs=epochs,
            callbacks=[_epoch_progress(report, epochs, epoch_lock)],
        )
        accuracy = float(np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test))
        if accuracy < OUTLIER_MIN_ACCURACY:
            raise RuntimeError(f"the outlier demo reached only {accuracy:.1%} held-out accuracy")
        note = (
            f"{OUTLIER_FIRST} output channel {channel} multiplied by {OUTLIER_FACTOR:g} and "
            f"{OUTLIER_SECOND}'s matching input weights divided by it (function-preserving); "
            "int8 collapses from that one outlier activation channel\n"
        )
        report(0.9, f"held-out accuracy {accuracy:.1%}; saving")
        _save_and_publish(
            model,
            staging,
            target,
            staging / "digits_outlier.keras",
            staging / "saved_model",
            {"ACCURACY": f"{accuracy:.4f}\n", "NOTE": note},
        )
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    report(1.0, f"outlier demo ready in {target}")
    return target
