"""Tiny real models and image sets, built by the tests (conv + batch norm + depthwise, so fusion
and quantization really happen)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TINY_SIZE = 16
TINY_CLASSES = 4


def build_tiny_model(*, softmax: bool = True, seed: int = 0, spatial: int | None = TINY_SIZE):  # type: ignore[no-untyped-def]
    """A few-KB MobileNet-style classifier with deterministic random weights."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    # Names pinned to what Keras gives them in a fresh process: Keras numbers unnamed layers
    # per process, so after another test built a model in-process, `dense` would be `dense_3`
    # and every test that names a layer (keep=dense) would name one that is not there.
    inputs = keras.Input((spatial, spatial, 3), name="image")
    x = layers.Conv2D(24, 3, padding="same", use_bias=False, name="conv2d")(inputs)
    x = layers.BatchNormalization(name="batch_normalization")(x)
    x = layers.ReLU(6.0, name="re_lu")(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="depthwise_conv2d")(x)
    x = layers.BatchNormalization(name="batch_normalization_1")(x)
    x = layers.ReLU(6.0, name="re_lu_1")(x)
    x = layers.Conv2D(48, 1, use_bias=False, name="conv2d_1")(x)
    x = layers.BatchNormalization(name="batch_normalization_2")(x)
    x = layers.ReLU(6.0, name="re_lu_2")(x)
    x = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
    x = layers.Dense(64, activation="relu", name="dense")(x)
    outputs = layers.Dense(TINY_CLASSES, activation="softmax" if softmax else None, name="scores")(
        x
    )
    return keras.Model(inputs, outputs)


def write_tiny_images(root: Path, *, per_class: int = 6, seed: int = 0) -> Path:
    """Class-coloured noise images in folders plus a CSV (filepath,label); returns the CSV."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in range(TINY_CLASSES):
        for i in range(per_class):
            base = np.zeros((20, 20, 3), dtype=np.float64)
            base[..., label % 3] = 160 + 60 * (label // 3)
            pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
            relpath = f"images/c{label}/{i}.png"
            (root / relpath).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / relpath)
            rows.append((relpath, label))
    csv_path = root / "data.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "label"])
        writer.writerows(rows)
    return csv_path


def unlabelled_copy(csv_path: Path, dest: Path) -> Path:
    """The CSV's images copied to `dest`, listed without labels; returns the new CSV.

    For runs that are not about accuracy: the tiny model's random weights are near chance on
    any labels, and then no variant may PASS (a meaningless run), so such a run exits 1.
    """
    with csv_path.open(encoding="utf-8", newline="") as f:
        relpaths = [row["filepath"] for row in csv.DictReader(f)]
    for rel in relpaths:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(csv_path.parent / rel, dest / rel)
    out = dest / "unlabelled.csv"
    out.write_text("filepath\n" + "".join(f"{rel}\n" for rel in relpaths), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same tiny model as `.keras` and as a SavedModel, plus a logits-output SavedModel."""
    root = tmp_path_factory.mktemp("tiny_models")
    model = build_tiny_model()
    model.save(root / "tiny.keras")
    model.export(str(root / "tiny_saved_model"), verbose=False)
    logits = build_tiny_model(softmax=False, seed=1)
    logits.export(str(root / "logits_saved_model"), verbose=False)
    return {
        "keras": root / "tiny.keras",
        "saved_model": root / "tiny_saved_model",
        "logits_saved_model": root / "logits_saved_model",
    }


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV data set of 24 labelled PNG images; returns the CSV path."""
    return write_tiny_images(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh QUANTLENS_HOME for one test (store, runs, conversion cache)."""
    home = tmp_path / "workspace"
    monkeypatch.setenv("QUANTLENS_HOME", str(home))
    return home
