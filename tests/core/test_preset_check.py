"""The preset check: the original under every preset before the run; a clearly better preset is
named in one line (CLI, report.json) with its numbers, recomputed here from the images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from core.metrics.preset_check import (
    CHECK_IMAGES,
    FIRST_LOOK_IMAGES,
    MIN_GAIN_PP,
    check_indices,
    judge_presets,
    needs_all_images,
)
from tests.core.conftest import TINY_CLASSES, TINY_SIZE, write_tiny_images
from tests.core.test_cli import run_cli

# The tiny data set's class colours (tests.core.conftest.write_tiny_images), as the mean of
# each channel in [0, 1]: clipped N(0, 40) noise averages 40 / sqrt(2 pi) = 16 where 0.
_DARK = 16.0 / 255.0
CENTROIDS = np.array(
    [
        [160 / 255, _DARK, _DARK],
        [_DARK, 160 / 255, _DARK],
        [_DARK, _DARK, 160 / 255],
        [218 / 255, _DARK, _DARK],
    ]
)


def build_raw_input_model():  # type: ignore[no-untyped-def]
    """A classifier whose preprocessing is inside (Rescaling(1/255), so it wants raw [0, 255]
    pixels): the nearest class colour of the image's mean pixel, as a softmax over
    50 * (2 c.x - |c|^2)."""
    import keras
    from keras import layers

    inputs = keras.Input((TINY_SIZE, TINY_SIZE, 3), name="image")
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    head = layers.Dense(TINY_CLASSES, activation="softmax", name="scores")
    outputs = head(x)
    model = keras.Model(inputs, outputs)
    head.set_weights(
        [
            (50.0 * 2.0 * CENTROIDS.T).astype(np.float32),
            (-50.0 * (CENTROIDS**2).sum(axis=1)).astype(np.float32),
        ]
    )
    return model


@pytest.fixture(scope="module")
def raw_input_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("raw_model") / "raw_input.keras"
    build_raw_input_model().save(path)
    return path


def _mean_pixel_predictions(csv_path: Path, preset: str) -> tuple[np.ndarray, np.ndarray]:
    """Independent recomputation: each image resized as the run does, preprocessed by hand,
    then the model's formula in numpy. Returns (top-1, labels)."""
    from core.inputs.images import decode_image

    with csv_path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    top1, labels = [], []
    for row in rows:
        x = decode_image(csv_path.parent / row["filepath"], height=TINY_SIZE, width=TINY_SIZE)
        x = x.astype(np.float64)
        if preset == "caffe":
            x = x[..., ::-1] - np.array([103.939, 116.779, 123.68])
        features = (x / 255.0).mean(axis=(0, 1))
        logits = 2.0 * CENTROIDS @ features - (CENTROIDS**2).sum(axis=1)
        top1.append(int(np.argmax(logits)))
        labels.append(int(row["label"]))
    return np.array(top1), np.array(labels)


# ---- the judgement, on hand-made trials ----------------------------------------------------


def _trial(labels: list[int], **presets: list[int]) -> dict[str, object]:
    return {
        "num_classes": 4,
        "labels": labels,
        "presets": {
            name: {"top1": top1, "confidence": [0.9] * len(top1)} for name, top1 in presets.items()
        },
    }


def test_a_clearly_more_accurate_preset_is_named_with_its_numbers() -> None:
    labels = [i % 4 for i in range(24)]
    wrong = [(i + 1) % 4 if i < 18 else i % 4 for i in range(24)]  # 6 of 24 right
    check = judge_presets(_trial(labels, caffe=wrong, raw=labels), "caffe")
    assert check["better"] == "raw" and check["basis"] == "accuracy"
    assert check["presets"]["raw"]["accuracy_pct"] == 100.0
    assert check["presets"]["caffe"]["accuracy_pct"] == 25.0
    assert check["p_value"] == pytest.approx(2 * 0.5**18)  # McNemar: 18 discordant, all one way
    assert "100.0 % accurate with preset raw but 25.0 % with caffe" in check["advice"]
    # The preset already in use is the best: nothing to say.
    assert judge_presets(_trial(labels, caffe=wrong, raw=labels), "raw")["advice"] is None


def test_a_small_or_unsure_gain_is_not_advice() -> None:
    labels = [i % 4 for i in range(24)]
    # 4 more right out of 24 (16.7 points), but McNemar on 4 discordant pairs: p = 0.125.
    used = [(i + 1) % 4 if i < 4 else i % 4 for i in range(24)]
    check = judge_presets(_trial(labels, unit=used, raw=labels), "unit")
    assert check["presets"]["raw"]["p_value"] == pytest.approx(0.125)
    assert check["presets"]["raw"]["gain_pp"] == pytest.approx(100.0 * 4 / 24)
    assert check["better"] is None and check["advice"] is None
    assert MIN_GAIN_PP <= 100.0 * 4 / 24  # the gain alone would have counted


def test_without_labels_a_clearly_more_confident_preset_is_a_hint_unless_it_collapses() -> None:
    n = 30
    spread = [i % 4 for i in range(n)]
    trial = {
        "num_classes": 4,
        "labels": [-1] * n,
        "presets": {
            "mobilenet_v2": {"top1": spread, "confidence": [0.4] * n},
            "raw": {"top1": spread, "confidence": [0.9] * n},
            "unit": {"top1": [0] * n, "confidence": [1.0] * n},  # saturated onto one class
        },
    }
    check = judge_presets(trial, "mobilenet_v2")
    assert check["basis"] == "confidence" and check["better"] == "raw"
    assert "90.0 % confident" in check["advice"] and "no labels, so a hint" in check["advice"]


def test_the_check_images_are_spread_over_the_data_set() -> None:
    assert check_indices(5) == [0, 1, 2, 3, 4]
    picked = check_indices(1000)
    assert len(picked) == 48 and picked[0] == 0 and picked[-1] == 999


# ---- a real model whose preprocessing is inside, run with the wrong preset --------------------


@pytest.mark.slow
def test_a_run_with_the_wrong_preset_names_the_better_one(
    raw_input_model: Path, tiny_data: Path, tmp_path: Path
) -> None:
    caffe_top1, labels = _mean_pixel_predictions(tiny_data, "caffe")
    raw_top1, _ = _mean_pixel_predictions(tiny_data, "raw")
    caffe_acc = 100.0 * float(np.mean(caffe_top1 == labels))
    raw_acc = 100.0 * float(np.mean(raw_top1 == labels))
    assert raw_acc - caffe_acc >= MIN_GAIN_PP  # the fixture is what the test is about

    done = run_cli(
        "run",
        str(raw_input_model),
        "--data",
        str(tiny_data),
        "--modes",
        "float16",
        "--preprocess",
        "caffe",
        "--out",
        str(tmp_path / "out"),
        "--latency-runs",
        "3",
        home=tmp_path / "home",
    )
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    check = report["preset_check"]
    assert check["used"] == "caffe" and check["better"] == "raw"
    assert check["n"] == check["labelled"] == len(labels)
    assert check["presets"]["caffe"]["accuracy_pct"] == pytest.approx(caffe_acc)
    assert check["presets"]["raw"]["accuracy_pct"] == pytest.approx(raw_acc)
    assert set(check["presets"]) == {"mobilenet_v2", "unit", "raw", "caffe", "torch"}
    line = (
        f"preset check: the original is {raw_acc:.1f} % accurate with preset raw but "
        f"{caffe_acc:.1f} % with caffe"
    )
    assert line in done.stdout, done.stdout + done.stderr
    assert check["advice"] in report["warnings"]
    assert "preset caffe" in done.stdout  # the verdict line names the preset used


@pytest.mark.slow
def test_a_right_preset_costs_half_the_check_and_a_wrong_one_is_judged_on_all(
    raw_input_model: Path, tmp_path: Path
) -> None:
    """The run's check (stages.start.check_preset, in process: the CLI's wiring is the test
    above): on 48 images the right preset is settled on the first look's 24, every other one;
    a wrong preset, with another far ahead there, is judged on all 48."""
    from core.engine.models import load_reference
    from core.engine.stages.start import check_preset
    from core.inputs.datasets import load_dataset
    from core.types import JobSpec, Preset

    def _job(model_path: Path, data_path: Path, preset: str) -> JobSpec:
        return JobSpec(model_path=str(model_path), data_path=str(data_path), preset=Preset(preset))

    data = write_tiny_images(tmp_path / "data", per_class=12)
    dataset = load_dataset(data)
    model = load_reference(raw_input_model)
    raw_top1, labels = _mean_pixel_predictions(data, "raw")
    assert len(labels) == CHECK_IMAGES and bool(np.all(raw_top1 == labels))

    from core.engine.stages.context import ReportFile

    right_file = ReportFile(tmp_path / "report.json", {"warnings": []})
    check_preset(right_file, model, dataset, _job(raw_input_model, data, "raw"))
    right = right_file.read_only
    check = right["preset_check"]
    assert isinstance(check, dict)
    assert check["better"] is None and right["warnings"] == []
    assert check["n"] == FIRST_LOOK_IMAGES == CHECK_IMAGES // 2
    assert check["presets"]["raw"]["accuracy_pct"] == 100.0

    wrong_file = ReportFile(tmp_path / "report.json", {"warnings": []})
    check_preset(wrong_file, model, dataset, _job(raw_input_model, data, "caffe"))
    wrong = wrong_file.read_only
    check = wrong["preset_check"]
    assert isinstance(check, dict)
    caffe_top1, _ = _mean_pixel_predictions(data, "caffe")
    assert check["n"] == CHECK_IMAGES and check["better"] == "raw"
    assert check["presets"]["caffe"]["accuracy_pct"] == pytest.approx(
        100.0 * float(np.mean(caffe_top1 == labels))
    )
    assert wrong["warnings"] == [check["advice"]]


def test_the_first_look_asks_for_every_image_only_when_a_preset_is_half_the_gain_ahead() -> None:
    labels = [0, 1, 2, 3] * 6
    even = _trial(labels, raw=labels, caffe=labels)
    assert not needs_all_images(even, "raw")
    # raw right on 20 of 24, caffe on 18: 8.3 points ahead, more than half of MIN_GAIN_PP
    ahead = _trial(labels, raw=labels[:20] + [0] * 4, caffe=labels[:18] + [0] * 6)
    assert MIN_GAIN_PP / 2 <= 100.0 * 2 / 24
    assert needs_all_images(ahead, "caffe") and not needs_all_images(ahead, "raw")
