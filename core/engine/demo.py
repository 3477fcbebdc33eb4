"""Build the embedded demo: scikit-learn's real handwritten digits as image files, and a small
MobileNet-style classifier trained on them, saved as a SavedModel and as a `.keras` file.

The images go through exactly the decoding and preprocessing a user's data set gets
(core.inputs.images and presets), so the demo's reference accuracy is honest and int8 flips are real.
"""

from __future__ import annotations

import csv
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.inputs.demo import DemoPaths, demo_paths, demo_root

INPUT_SIZE = 32  # digits are 8x8; 32x32 leaves room for three stride-2 blocks
HELD_OUT_FRACTION = 0.35
SEED = 7
EPOCHS = 20


def write_digit_images(data_dir: Path) -> tuple[Path, Path]:
    """Write sklearn's 1,797 digits as PNG files (dark ink on white) with a train and a held-out CSV."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(digits.images))
    held_out = set(order[: int(len(order) * HELD_OUT_FRACTION)].tolist())
    rows: dict[str, list[tuple[str, int]]] = {"train": [], "digits": []}
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        relpath = f"images/{label}/{i:04d}.png"
        target = data_dir / relpath
        target.parent.mkdir(parents=True, exist_ok=True)
        pixels = (255 - np.round(image * (255 / 16))).astype(np.uint8)  # 0..16 ink -> paper white
        Image.fromarray(pixels, mode="L").save(target)
        rows["digits" if i in held_out else "train"].append((relpath, int(label)))
    for name, entries in rows.items():
        with (data_dir / f"{name}.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["filepath", "label"])
            writer.writerows(entries)
    (data_dir / "labels.txt").write_text(
        "\n".join(str(d) for d in range(10)) + "\n", encoding="utf-8"
    )
    return data_dir / "train.csv", data_dir / "digits.csv"


def load_split(csv_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode a split through the same path as evaluation (core.inputs), preprocessed for MobileNetV2."""
    from core.inputs.datasets import load_dataset
    from core.inputs.images import decode_image
    from core.inputs.presets import apply_preset
    from core.types import Preset

    dataset = load_dataset(csv_path)
    images = np.stack(
        [
            decode_image(s.path, height=INPUT_SIZE, width=INPUT_SIZE, channels=3)
            for s in dataset.samples
        ]
    )
    labels = np.asarray([s.label for s in dataset.samples], dtype=np.int64)
    return apply_preset(images, Preset.MOBILENET_V2), labels


def mobilenet_like(num_classes: int = 10) -> Any:
    """Conv + batch norm + ReLU6 stem, then depthwise-separable blocks, as MobileNet builds them."""
    import keras
    from keras import layers

    def conv_bn(x: Any, filters: int, kernel: int, stride: int) -> Any:
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU(6.0)(x)

    def separable(x: Any, filters: int, stride: int) -> Any:
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU(6.0)(x)
        return conv_bn(x, filters, 1, 1)

    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="image")
    x = conv_bn(inputs, 16, 3, 1)
    x = separable(x, 32, 2)
    x = separable(x, 48, 2)
    x = separable(x, 48, 1)
    x = separable(x, 96, 2)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="digits_mobilenet")


def build_demo(
    root: Path | None = None,
    *,
    progress: Callable[[float, str], None] | None = None,
    epochs: int = EPOCHS,
) -> DemoPaths:
    """Build the demo into `root` (default <workspace>/demo) unless it is already there.

    Training is deterministic (fixed seeds, deterministic ops) and takes about a minute on two
    cores. Everything is written to a temporary folder first and renamed into place, so a
    half-built demo is never mistaken for a ready one.

    Returns:
        The demo's paths.

    Raises:
        RuntimeError: the trained model misses 95 % held-out accuracy (a bug, not user input).
    """
    import keras
    import tensorflow as tf

    paths = demo_paths(root=root or demo_root())
    if paths.ready():
        return paths
    report = progress or (lambda fraction, message: None)
    paths.root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=paths.root.parent))
    try:
        staged = demo_paths(root=staging)
        report(0.02, "writing scikit-learn's handwritten digits as PNG files")
        train_csv, test_csv = write_digit_images(staged.data_csv.parent)
        report(0.08, "decoding the images")
        x_train, y_train = load_split(train_csv)
        x_test, y_test = load_split(test_csv)

        keras.utils.set_random_seed(SEED)
        tf.config.experimental.enable_op_determinism()
        model = mobilenet_like()
        model.compile(
            optimizer=keras.optimizers.Adam(2e-3),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )

        class Progress(keras.callbacks.Callback):  # type: ignore[misc]
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                accuracy = (logs or {}).get("accuracy", float("nan"))
                report(
                    0.1 + 0.8 * (epoch + 1) / epochs,
                    f"training epoch {epoch + 1}/{epochs} (train accuracy {accuracy:.3f})",
                )

        model.fit(
            x_train,
            y_train,
            batch_size=32,
            epochs=epochs,
            verbose=0,
            shuffle=True,
            callbacks=[Progress()],
        )
        _, accuracy = model.evaluate(x_test, y_test, verbose=0)
        if accuracy < 0.95:
            raise RuntimeError(
                f"demo model reached only {accuracy:.1%} held-out accuracy; expected >= 95%"
            )
        report(0.92, f"held-out accuracy {accuracy:.1%} on {len(y_test)} images; saving the model")
        staged.keras_model.parent.mkdir(parents=True, exist_ok=True)
        model.save(staged.keras_model)
        model.export(str(staged.saved_model), verbose=False)
        (staging / "ACCURACY").write_text(f"{accuracy:.4f}\n", encoding="utf-8")
        if paths.root.exists():
            shutil.rmtree(paths.root)
        staging.rename(paths.root)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    report(1.0, f"demo ready in {paths.root}")
    return paths
