"""Build the embedded demos: scikit-learn's real handwritten digits as image files, a small
MobileNet-style classifier trained on them (built first, about a minute), and a standard
`keras.applications.MobileNetV2` (alpha 0.35, 96x96) trained on the same images (built after
it), each saved as a SavedModel and as a `.keras` file.

The images go through exactly the decoding and preprocessing a user's data set gets
(core.inputs.images and presets), so the demo's reference accuracy is honest and int8 flips are real.
"""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from core.inputs.demo_paths import DemoPaths, demo_paths, demo_root, mobilenet_demo_paths

INPUT_SIZE = 32  # digits are 8x8; 32x32 leaves room for three stride-2 blocks
HELD_OUT_FRACTION = 0.35
SEED = 7
EPOCHS = 20
# MobileNetV2's smallest standard width and a size its five stride-2 stages divide (96 -> 3).
# The 8x8 digits reach 96x96 through the one decoder users get (bilinear stretch), so a run
# on the demo data decodes exactly what the model was trained on.
MOBILENET_INPUT_SIZE = 96
MOBILENET_ALPHA = 0.35
MOBILENET_EPOCHS = 6
# A guard against a broken build (one class predicted everywhere), not a quality target:
# the measured full build reaches about 92 %, and nothing is tuned toward any number.
MOBILENET_MIN_ACCURACY = 0.80


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


def load_split(csv_path: Path, size: int = INPUT_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Decode a split through the same path as evaluation (core.inputs), preprocessed for MobileNetV2."""
    from core.inputs.datasets import load_dataset
    from core.inputs.images import decode_image
    from core.inputs.presets import apply_preset
    from core.types import Preset

    dataset = load_dataset(csv_path)
    images = np.stack(
        [decode_image(s.path, height=size, width=size, channels=3) for s in dataset.samples]
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
    staging = _staging_folder(paths.root.parent, ".demo-")
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
        _save_and_publish(
            model,
            staging,
            paths.root,
            staged.keras_model,
            staged.saved_model,
            {"ACCURACY": f"{accuracy:.4f}\n"},
        )
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    report(1.0, f"demo ready in {paths.root}")
    return paths


def _staging_folder(parent: Path, prefix: str) -> Path:
    """A new staging folder `<prefix><pid>-<random>` in `parent`, after removing those a
    killed build left (its process is gone; a build that is still running keeps its own)."""
    from core.posix import pid_alive

    for left in parent.glob(f"{prefix}*"):
        owner = left.name.removeprefix(prefix).split("-", 1)[0]
        if left.is_dir() and owner.isdigit() and not pid_alive(int(owner)):
            shutil.rmtree(left, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))


def _save_and_publish(
    model: Any,
    staging: Path,
    root: Path,
    keras_model: Path,
    saved_model: Path,
    notes: dict[str, str],
) -> None:
    """Save a trained demo model (and its note files) into `staging`, then swap it in for
    `root` with one rename, so a half-built demo is never taken for a ready one."""
    keras_model.parent.mkdir(parents=True, exist_ok=True)
    model.save(keras_model)
    model.export(str(saved_model), verbose=False)
    for name, text in notes.items():
        (staging / name).write_text(text, encoding="utf-8")
    if root.exists():
        shutil.rmtree(root)
    staging.rename(root)


def mobilenet_v2_digits(num_classes: int = 10) -> Any:
    """The standard keras.applications MobileNetV2-0.35 at 96x96, untrained, for 10 digits.

    Its BatchNormalization layers keep momentum 0.999 by default; over a few hundred training
    steps their moving statistics would stay near their initial values and inference would
    predict one class (QUANTIZATION_NOTES.md), so they get 0.9, as a short fine-tune would.
    """
    import keras

    model = keras.applications.MobileNetV2(
        input_shape=(MOBILENET_INPUT_SIZE, MOBILENET_INPUT_SIZE, 3),
        alpha=MOBILENET_ALPHA,
        weights=None,
        classes=num_classes,
    )
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return model


def build_mobilenet_demo(
    root: Path | None = None,
    *,
    progress: Callable[[float, str], None] | None = None,
    epochs: int = MOBILENET_EPOCHS,
    min_accuracy: float = MOBILENET_MIN_ACCURACY,
    epoch_lock: Callable[[], AbstractContextManager[None]] | None = None,
) -> DemoPaths:
    """Train the MobileNetV2-0.35 demo on the small demo's digits, unless it is already built.

    The small demo (its data) must be built first; this adds `<demo>/mobilenetv2/`. Same seed,
    same split, same decoder and preset as the small one; about 80 s for 6 epochs on two cores.
    Written to a temporary folder first and renamed into place, as build_demo does.

    Args:
        root: the small demo's folder (default <workspace>/demo).
        progress: called with (fraction done, message).
        epochs: training epochs (tests use 1 to keep time down).
        min_accuracy: below this held-out accuracy the build fails (a broken build).
        epoch_lock: entered for each epoch, so a caller can make training and other work
            (a run's latency timing) take turns on the cores.

    Returns:
        The MobileNetV2 demo's paths.

    Raises:
        RuntimeError: the small demo's data is missing, or the model misses `min_accuracy`.
    """
    import keras
    import tensorflow as tf

    small = demo_paths(root=root or demo_root())
    paths = mobilenet_demo_paths(root=small.root)
    if paths.ready():
        return paths
    if not small.data_csv.is_file():
        raise RuntimeError(f"the small demo's data is missing in {small.root}; build it first")
    report = progress or (lambda fraction, message: None)
    staging = _staging_folder(small.root, ".mobilenetv2-")
    try:
        report(0.02, "decoding the digits at 96x96")
        size = MOBILENET_INPUT_SIZE
        x_train, y_train = load_split(small.data_csv.parent / "train.csv", size)
        x_test, y_test = load_split(small.data_csv, size)

        keras.utils.set_random_seed(SEED)
        tf.config.experimental.enable_op_determinism()
        model = mobilenet_v2_digits()
        model.compile(
            optimizer=keras.optimizers.Adam(2e-3),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        report(0.05, f"training epoch 0/{epochs}")
        model.fit(
            x_train,
            y_train,
            batch_size=32,
            epochs=epochs,
            verbose=0,
            shuffle=True,
            callbacks=[_epoch_progress(report, epochs, epoch_lock)],
        )
        _, accuracy = model.evaluate(x_test, y_test, verbose=0)
        if accuracy < min_accuracy:
            raise RuntimeError(
                f"the MobileNetV2 demo reached only {accuracy:.1%} held-out accuracy after "
                f"{epochs} epoch(s); expected >= {min_accuracy:.0%}"
            )
        report(0.92, f"held-out accuracy {accuracy:.1%} on {len(y_test)} images; saving")
        _save_and_publish(
            model,
            staging,
            paths.root,
            staging / paths.keras_model.name,
            staging / paths.saved_model.name,
            {"ACCURACY": f"{accuracy:.4f}\n", "EPOCHS": f"{epochs}\n"},
        )
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    report(1.0, f"MobileNetV2 demo ready in {paths.root}")
    return paths


def _epoch_progress(
    report: Callable[[float, str], None],
    epochs: int,
    lock: Callable[[], AbstractContextManager[None]] | None = None,
) -> Any:
    """A Keras callback reporting "training epoch k/n (train accuracy …)" after each epoch, and
    holding `lock` (when given) during each epoch only."""
    import keras

    held = contextlib.ExitStack()

    class EpochProgress(keras.callbacks.Callback):  # type: ignore[misc]
        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            if lock is not None:
                held.enter_context(lock())

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            held.close()
            accuracy = (logs or {}).get("accuracy", float("nan"))
            report(
                0.05 + 0.85 * (epoch + 1) / epochs,
                f"training epoch {epoch + 1}/{epochs} (train accuracy {accuracy:.3f})",
            )

        def on_train_end(self, logs: dict[str, float] | None = None) -> None:
            held.close()

    return EpochProgress()
