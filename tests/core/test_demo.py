"""core.engine.demo_models without training: its paths, when it counts as ready, and the digit images it
writes (the model build itself is exercised by the app and e2e tests)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.engine.demo_models import HELD_OUT_FRACTION, write_digit_images
from core.inputs.demo_paths import demo_paths, demo_root


def test_demo_lives_in_the_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTLENS_HOME", str(tmp_path))
    assert demo_root() == tmp_path.resolve() / "demo"
    paths = demo_paths()
    assert paths.root == tmp_path.resolve() / "demo"
    assert paths.saved_model == paths.root / "model" / "saved_model"
    assert paths.keras_model == paths.root / "model" / "digits.keras"
    assert paths.data_csv == paths.root / "data" / "digits.csv"
    assert paths.labels == paths.root / "data" / "labels.txt"
    assert demo_paths(root=tmp_path / "elsewhere").root == tmp_path / "elsewhere"


def test_ready_only_when_both_models_and_the_data_exist(tmp_path: Path) -> None:
    paths = demo_paths(root=tmp_path)
    assert not paths.ready()
    paths.saved_model.mkdir(parents=True)
    (paths.saved_model / "saved_model.pb").write_bytes(b"pb")
    paths.keras_model.write_bytes(b"keras")
    assert not paths.ready()  # a half-built demo (no data yet) is not ready
    paths.data_csv.parent.mkdir(parents=True)
    paths.data_csv.write_text("filepath,label\n")
    assert paths.ready()
    (paths.saved_model / "saved_model.pb").unlink()
    assert not paths.ready()


def test_digit_images_are_split_and_written_as_user_data(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    train_csv, eval_csv = write_digit_images(tmp_path)

    def rows(path: Path) -> list[tuple[str, int]]:
        with path.open(encoding="utf-8") as f:
            return [(r["filepath"], int(r["label"])) for r in csv.DictReader(f)]

    train, held_out = rows(train_csv), rows(eval_csv)
    total = 1797  # scikit-learn's digits
    assert len(held_out) == int(total * HELD_OUT_FRACTION) == 628
    assert len(train) + len(held_out) == total
    assert not {p for p, _ in train} & {p for p, _ in held_out}
    assert {label for _, label in held_out} == set(range(10))
    for relpath, label in held_out[:20]:
        assert relpath.startswith(f"images/{label}/")
        pixels = np.asarray(Image.open(tmp_path / relpath))
        assert pixels.shape == (8, 8) and pixels.dtype == np.uint8
        assert pixels.max() == 255  # paper is white; ink is dark
    labels = (tmp_path / "labels.txt").read_text(encoding="utf-8").split()
    assert labels == [str(d) for d in range(10)]
