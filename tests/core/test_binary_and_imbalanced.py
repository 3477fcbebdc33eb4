"""Held-out models the tiny test models do not look like, through the real CLI: a binary digit
classifier with one sigmoid output, and a three-class model scored on imbalanced labels.

Each model is trained here on sklearn's handwritten digits and scored on digits it never saw.
The test then recomputes what the run reports with keras and `ai_edge_litert` in a few lines
of numpy (nothing from core.metrics, core.engine or core.inputs): how many images were
evaluated, the original's and each variant's accuracy, top-1 agreement, the probability
deltas, the majority-class baseline and the verdict.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.core.test_cli import binomial_tail, run_cli

pytestmark = pytest.mark.slow

SIZE = 8
TRAIN = 1200  # digits [0, TRAIN) train the models; the rest are held out
MODES = ("float32", "int8")


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's handwritten digits as uint8 RGB 8x8 images, and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1), digits.target.astype(np.int64)


def _write_set(root: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """PNG files plus a CSV (filepath,label); returns the CSV."""
    root.mkdir(parents=True)
    rows = []
    for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
        Image.fromarray(pixels).save(root / f"{i:04d}.png")
        rows.append((f"{i:04d}.png", int(label)))
    with (root / "data.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("filepath", "label"), *rows])
    return root / "data.csv"


def _train(images: np.ndarray, labels: np.ndarray, *, classes: int) -> Any:
    """A small conv classifier: one sigmoid output for two classes, else a softmax."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(5)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = layers.Flatten()(x)
    x = layers.Dense(32, activation="relu")(x)
    if classes == 2:
        outputs = layers.Dense(1, activation="sigmoid", name="p_odd")(x)
        loss = "binary_crossentropy"
    else:
        outputs = layers.Dense(classes, activation="softmax")(x)
        loss = "sparse_categorical_crossentropy"
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.005), loss=loss)
    model.fit(images.astype(np.float32) / 255.0, labels, epochs=15, batch_size=32, verbose=0)
    return model


def _without_sigmoid(model: Any) -> Any:
    """The binary model's architecture and weights, its one output left a logit."""
    import keras
    from keras import layers

    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    x = layers.Flatten()(x)
    x = layers.Dense(32, activation="relu")(x)
    logit = keras.Model(inputs, layers.Dense(1, name="logit_odd")(x))
    logit.set_weights(model.get_weights())
    return logit


def _run(root: Path, model: Any, data: Path, *calibration: str) -> dict[str, Any]:
    """The CLI on the model; `calibration` says where int8's calibration images come from so
    that nothing is held out of evaluation: every held-out digit is evaluated."""
    root.mkdir(parents=True, exist_ok=True)
    model.save(root / "model.keras")
    out = root / "run"
    done = run_cli(
        "run",
        str(root / "model.keras"),
        "--data",
        str(data),
        *calibration,
        "--modes",
        ",".join(MODES),
        "--preprocess",
        "unit",
        "--threads",
        "1",
        "--latency-runs",
        "2",
        "--out",
        str(out),
        home=root / "home",
    )
    return {"done": done, "out": out, "report": json.loads((out / "report.json").read_text())}


@pytest.fixture(scope="session")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Both models trained, scored by the CLI, and the test's own inputs for them."""
    root = tmp_path_factory.mktemp("held_out_heads")
    images, digits = _digits()
    train = np.arange(TRAIN)
    held = np.arange(len(images) - 400, len(images))
    runs: dict[str, dict[str, Any]] = {}

    # Even (0) or odd (1): one sigmoid output, P(odd). Balanced held-out labels.
    odd = digits % 2
    binary = _train(images[train], odd[train], classes=2)
    data = _write_set(root / "binary" / "data", images[held], odd[held])
    # Calibration drawn from the evaluated images themselves, both classes among them.
    overlap = _run(root / "binary", binary, data, "--calibration-overlap")
    runs["binary"] = {**overlap, "model": binary}
    runs["binary"].update(inputs=images[held], labels=odd[held])
    # The same classifier ending in its logit (no sigmoid): values outside [0, 1].
    logit = _without_sigmoid(binary)
    overlap = _run(root / "logit", logit, data, "--calibration-overlap")
    runs["logit"] = {**overlap, "model": logit, "inputs": images[held], "labels": odd[held]}

    # Digits 0, 1, 2, trained balanced, scored on held-out digits where 0 is the majority.
    keep = train[digits[train] < 3]
    three = _train(images[keep], digits[keep], classes=3)
    pools = [np.flatnonzero(digits[TRAIN:] == c) + TRAIN for c in range(3)]
    count = len(pools[0])
    chosen = np.concatenate([pools[0], pools[1][: count * 2 // 5], pools[2][: count // 5]])
    data = _write_set(root / "three" / "data", images[chosen], digits[chosen])
    calib = _write_set(root / "three" / "calib", images[keep[:60]], digits[keep[:60]])
    separate = _run(root / "three", three, data, "--calibration-data", str(calib))
    runs["three"] = {**separate, "model": three}
    runs["three"].update(inputs=images[chosen], labels=digits[chosen])
    return runs


def _round_half_away(v: np.ndarray) -> np.ndarray:
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _litert_outputs(tflite: bytes, inputs: np.ndarray) -> np.ndarray:
    """The .tflite run image by image in ai_edge_litert, (de)quantized with its own params."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite, num_threads=1)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    rows = []
    for image in inputs:
        x: np.ndarray = image[None]
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            q = _round_half_away(x.astype(np.float64) / scale) + zero
            x = np.clip(q, info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        y = interpreter.get_tensor(out["index"])[0]
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            y = (y.astype(np.float64) - zero) * scale
        rows.append(np.asarray(y, dtype=np.float64))
    return np.stack(rows)


def _as_classes(outputs: np.ndarray, *, logit: bool) -> np.ndarray:
    """One column p (a logit x: p = sigmoid(x)) as the two classes [1 - p, p]; a softmax as
    it is."""
    if outputs.shape[1] != 1:
        return outputs
    p = 1.0 / (1.0 + np.exp(-outputs)) if logit else outputs
    return np.hstack([1.0 - p, p])


@pytest.mark.parametrize("which", ["binary", "logit", "three"])
def test_held_out_model_gets_correct_agreement_and_a_verdict(
    held_out: dict[str, dict[str, Any]], which: str
) -> None:
    run = held_out[which]
    done, out, report = run["done"], run["out"], run["report"]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    labels: np.ndarray = run["labels"]
    n = len(labels)
    inputs = run["inputs"].astype(np.float32) / np.float32(255.0)
    logit = which == "logit"
    raw = np.asarray(run["model"](inputs, training=False), dtype=np.float64)
    if logit:
        assert raw.min() < 0.0 or raw.max() > 1.0  # the premise: logits, not probabilities
    ref = _as_classes(raw, logit=logit)
    ref_top1 = ref.argmax(axis=1)
    classes = 3 if which == "three" else 2
    assert report["reference"]["softmax_applied"] is logit

    # Every image evaluated: a label-1 image is no longer "outside the model's 1 classes".
    assert report["dataset"]["num_samples"] == n and report["dataset"]["num_skipped"] == 0
    assert report["reference"]["num_classes"] == classes
    with (out / "samples.csv").open(encoding="utf-8") as f:
        written_labels = np.array([int(r["label"]) for r in csv.DictReader(f)])
    np.testing.assert_array_equal(written_labels, labels)
    np.testing.assert_allclose(np.load(out / "reference.probs.npy"), ref, atol=1e-5)

    accuracy = 100.0 * np.mean(ref_top1 == labels)
    assert report["reference"]["accuracy_pct"] == pytest.approx(accuracy)
    assert accuracy > 85.0  # the premise: a working model

    # The verdict rests on the labels' majority class, and the original is clearly above it.
    counts = np.bincount(labels)
    majority = int(counts.argmax())
    correct = int(np.sum(ref_top1 == labels))
    p = binomial_tail(correct, n, counts[majority] / n)
    assert p < 1e-3
    baseline = report["reference"]["accuracy_baseline"]
    assert (baseline["majority_class"], baseline["majority_count"], baseline["n"]) == (
        majority,
        counts[majority],
        n,
    )
    assert baseline["correct"] == correct
    assert baseline["p_value"] == pytest.approx(p, rel=1e-6, abs=1e-300)

    for name in MODES:
        variant = next(v for v in report["variants"] if v["name"] == name)
        assert variant["status"] == "done", variant["error"]
        tfl_raw = _litert_outputs((out / f"{name}.tflite").read_bytes(), inputs)
        tfl = _as_classes(tfl_raw, logit=logit)
        tfl_top1 = tfl.argmax(axis=1)
        agree = int(np.sum(tfl_top1 == ref_top1))
        assert variant["n"] == n
        assert variant["top1_agreement_pct"] == pytest.approx(100.0 * agree / n), name
        assert variant["disagreements"] == n - agree
        assert variant["tflite_accuracy_pct"] == pytest.approx(100.0 * np.mean(tfl_top1 == labels))
        assert variant["max_abs_prob_delta"] == pytest.approx(np.abs(ref - tfl).max(), abs=1e-5)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = ref * (np.log(ref) - np.log(np.clip(tfl, 1e-12, None)))
        kl = np.where(ref > 0, terms, 0.0).sum(axis=1)  # 0 log 0 = 0
        assert variant["mean_kl"] == pytest.approx(max(0.0, float(kl.mean())), abs=1e-4)
        # A real verdict: judged against the threshold, no "near chance" reason.
        assert variant["verdict_reason"] is None
        assert variant["passed"] is (100.0 * agree / n >= 95.0)
    judged = [v["passed"] for v in report["variants"] if v["name"] in MODES]
    assert run["done"].returncode == (0 if all(judged) else 1), done.stderr[-2000:]


def test_binary_model_scores_both_classes(held_out: dict[str, dict[str, Any]]) -> None:
    """Read as one column every image was class 0: now both classes are predicted and scored."""
    run = held_out["binary"]
    labels = run["labels"]
    assert 150 < int(labels.sum()) < 250  # balanced: about half the images are label 1
    with (run["out"] / "samples.csv").open(encoding="utf-8") as f:
        predicted = np.array([int(r["ref_top1"]) for r in csv.DictReader(f)])
    assert set(predicted.tolist()) == {0, 1}
    # int8 was calibrated on both classes (label-1 images used to be dropped before the draw).
    with (run["out"] / "calibration.csv").open(encoding="utf-8") as f:
        calibrated = [int(r["relpath"].split(".")[0]) for r in csv.DictReader(f)]
    assert len(calibrated) == 100
    assert set(labels[calibrated].tolist()) == {0, 1}
    report = run["report"]
    assert report["reference"]["output_columns"] == 1
    float32 = next(v for v in report["variants"] if v["name"] == "float32")
    assert len(float32["flip_matrix"]) == 2


def test_imbalanced_three_class_baseline_is_named_in_report_html(
    held_out: dict[str, dict[str, Any]],
) -> None:
    run = held_out["three"]
    labels = run["labels"]
    counts = np.bincount(labels)
    assert counts[0] / len(labels) > 0.55  # the premise: imbalanced
    from core.reporting.html import render_report_html

    html = render_report_html(run["out"])
    rate = 100.0 * counts[0] / len(labels)
    assert f"majority class 0 at {rate:.1f} % of n={len(labels)}" in html
    assert math.isfinite(run["report"]["reference"]["accuracy_baseline"]["p_value"])


def test_a_multi_label_head_is_refused_in_one_line(tmp_path: Path, tiny_data: Path) -> None:
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(8, 3, activation="relu")(inputs))
    keras.Model(inputs, layers.Dense(3, activation="sigmoid")(x)).save(tmp_path / "tags.keras")
    done = run_cli(
        "run",
        str(tmp_path / "tags.keras"),
        "--data",
        str(tiny_data),
        "--modes",
        "float32",
        "--out",
        str(tmp_path / "out"),
        home=tmp_path / "home",
    )
    assert done.returncode == 2, done.stdout + done.stderr[-2000:]
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert lines[-1].endswith(
        "tags.keras outputs 3 independent scores in [0, 1] that do not sum to 1 (a multi-label "
        "head); QuantLens judges single-label classifiers: end the model in a softmax, or give "
        "a two-class model one sigmoid output"
    ), done.stderr
    assert "Traceback" not in done.stderr
    assert not list((tmp_path / "out").glob("*.tflite"))
