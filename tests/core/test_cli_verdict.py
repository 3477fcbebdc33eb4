"""The real CLI on a model that is only right with the right preset: a near-chance original gives
no PASS (exit 1, the reason on the line), and two CSVs in one folder are told apart by content."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from core.history.store import open_store
from core.reporting.run_compare import compared_items, what_changed
from tests.core.conftest import TINY_CLASSES, TINY_SIZE
from tests.core.test_cli import binomial_tail, run_cli

pytestmark = pytest.mark.slow


def build_colour_model(path: Path) -> Path:
    """A hand-weighted classifier of the tiny data set's colours that needs `unit` inputs.

    Features are the mean R, G, B in [0, 1]. Classes 0-2 follow the dominant channel; class 3
    is a brighter red, so its logit carries a bias and a (G + B) term. With `raw` inputs
    (x 255) that term dwarfs everything, and every image lands in class 3.
    """
    import keras
    from keras import layers

    inputs = keras.Input((TINY_SIZE, TINY_SIZE, 3), name="image")
    x = layers.GlobalAveragePooling2D()(inputs)
    dense = layers.Dense(TINY_CLASSES, name="logits")
    x = dense(x)
    outputs = layers.Softmax(name="scores")(x)
    model = keras.Model(inputs, outputs)
    #                 class: 0     1     2     3
    kernel = np.array(
        [
            [20.0, 0.0, 0.0, 40.0],  # R
            [0.0, 20.0, 0.0, 25.0],  # G
            [0.0, 0.0, 20.0, 25.0],  # B
        ],
        dtype=np.float32,
    )
    bias = np.array([0.0, 0.0, 0.0, -17.0], dtype=np.float32)
    dense.set_weights([kernel, bias])
    model.save(path)
    return path


def _labels(csv_path: Path) -> list[int]:
    with csv_path.open(encoding="utf-8") as f:
        return [int(row["label"]) for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def two_runs(
    tiny_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, subprocess.CompletedProcess[str]], dict[str, dict]]:
    """One run with the wrong preset on data.csv, one with the right preset on a second CSV
    (every other row) in the same folder."""
    root = tmp_path_factory.mktemp("colour")
    model = build_colour_model(root / "colour.keras")
    # A private copy: other tests zip or list the shared tiny data folder.
    folder = root / "data"
    shutil.copytree(tiny_data.parent, folder)
    rows = (folder / "data.csv").read_text(encoding="utf-8").splitlines()
    half = folder / "half.csv"
    half.write_text("\n".join([rows[0], *rows[1::2]]) + "\n", encoding="utf-8")
    home = root / "home"
    done: dict[str, subprocess.CompletedProcess[str]] = {}
    reports: dict[str, dict] = {}
    for name, data, preset, modes in (
        ("wrong", folder / "data.csv", "raw", "float32,int8"),
        ("right", half, "unit", "float32"),
    ):
        out = root / name
        done[name] = run_cli(
            "run",
            str(model),
            "--data",
            str(data),
            "--modes",
            modes,
            "--preprocess",
            preset,
            "--calibration-samples",
            "8",
            "--calibration-overlap",  # every image evaluated: the accuracy below counts all 24
            "--latency-runs",
            "3",
            "--threads",
            "1",
            "--out",
            str(out),
            home=home,
        )
        reports[name] = json.loads((out / "report.json").read_text(encoding="utf-8"))
    return home, done, reports


def test_wrong_preset_gives_no_verdict_and_exit_1(two_runs, tiny_data: Path) -> None:  # type: ignore[no-untyped-def]
    _, done, reports = two_runs
    wrong, report = done["wrong"], reports["wrong"]
    assert wrong.returncode == 1, wrong.stderr[-2000:]
    labels = _labels(tiny_data)
    # Every image is predicted class 3 with x255 inputs: accuracy is the share of class 3.
    expected_acc = 100.0 * labels.count(3) / len(labels)
    assert report["reference"]["accuracy_pct"] == pytest.approx(expected_acc)
    # Accuracy is the share of class 3, never clearly above the most common class's share.
    n = len(labels)
    majority = max(range(TINY_CLASSES), key=lambda c: (labels.count(c), -c))
    rate = labels.count(majority) / n
    p = binomial_tail(labels.count(3), n, rate)
    assert p >= 1e-3
    for name in ("float32", "int8"):
        line = (
            f"{name}: NO VERDICT — the original is {expected_acc:.1f} % accurate, not clearly "
            f"above always answering the majority class {majority} at {100 * rate:.1f} % of "
            f"n={n} (one-sided binomial p = {p:.2g}): check the preprocessing preset or the labels"
        )
        assert line in wrong.stdout.splitlines(), wrong.stdout
        variant = next(v for v in report["variants"] if v["name"] == name)
        assert variant["passed"] is False
        assert variant["verdict_reason"] == line.split("NO VERDICT — ", 1)[1]
        # Both models agree on garbage: agreement alone would have passed.
        assert variant["top1_agreement_pct"] >= 95.0
    table_rows = [
        ln.split() for ln in wrong.stdout.splitlines() if ln.startswith(("float32", "int8"))
    ]
    assert all("PASS" not in row for row in table_rows)


def test_right_preset_passes_with_exit_0(two_runs, tiny_data: Path) -> None:  # type: ignore[no-untyped-def]
    _, done, reports = two_runs
    right, report = done["right"], reports["right"]
    assert right.returncode == 0, right.stdout + right.stderr[-2000:]
    assert report["reference"]["accuracy_pct"] == pytest.approx(100.0)
    [variant] = report["variants"]
    assert variant["passed"] is True and variant["verdict_reason"] is None
    assert "NO VERDICT" not in right.stdout


def test_two_csvs_in_one_folder_are_different_data(two_runs, tiny_data: Path) -> None:  # type: ignore[no-untyped-def]
    home, _, reports = two_runs
    wrong, right = reports["wrong"]["dataset"], reports["right"]["dataset"]
    assert wrong["path"] == right["path"]  # the same folder ...
    folder = Path(wrong["path"])
    assert wrong["file"] == str(folder / "data.csv")
    assert right["file"] == str(folder / "half.csv")
    assert len(wrong["sha256"]) == 64 and len(right["sha256"]) == 64
    assert wrong["sha256"] != right["sha256"]  # ... but not the same data
    with open_store(home) as store:
        stored = {r.data_sha256 for r in store.list_runs()}
    assert stored == {wrong["sha256"], right["sha256"]}

    items = compared_items(
        [
            ("a", "wrong", "float32", reports["wrong"]),
            ("b", "right", "float32", reports["right"]),
        ]
    )
    differs = {row.field: row.differs for row in what_changed(items)}
    assert differs["data path"] is False
    assert differs["data file"] is True
    assert differs["data sha256"] is True
