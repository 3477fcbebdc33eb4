"""Two small engine facts behind the display: KL is never negative, and a data set's content
hash tells two CSVs in one folder apart."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.inputs.datasets import dataset_sha256, load_dataset
from core.metrics.agreement import sample_records


def test_kl_is_clamped_at_zero_for_rows_that_sum_just_above_one() -> None:
    ref = np.array([[0.5, 0.5], [0.9, 0.1]], dtype=np.float32)
    # Row 0: float32 outputs whose sum is 1 + 2e-7; the raw sum of p*log(p/q) is about -2e-7.
    tfl = np.array([[0.5 + 1e-7, 0.5 + 1e-7], [0.6, 0.4]], dtype=np.float32)
    raw = float(np.sum(ref[0].astype(np.float64) * np.log(ref[0] / tfl[0].astype(np.float64))))
    assert raw < 0  # what the per-sample CSV showed before the clamp
    kl = sample_records(ref, tfl).kl
    assert kl[0] == 0.0
    # Row 1 by hand: 0.9 ln(0.9/0.6) + 0.1 ln(0.1/0.4)
    expected = 0.9 * math.log(0.9 / 0.6) + 0.1 * math.log(0.1 / 0.4)
    assert kl[1] == pytest.approx(expected, rel=1e-6)


def _images(root: Path) -> None:
    for i in range(4):
        (root / "img").mkdir(exist_ok=True)
        Image.new("RGB", (4, 4), (i * 60, 0, 0)).save(root / "img" / f"{i}.png")


def _csv(path: Path, rows: list[tuple[int, int]]) -> Path:
    path.write_text(
        "filepath,label\n" + "".join(f"img/{i}.png,{label}\n" for i, label in rows),
        encoding="utf-8",
    )
    return path


def test_two_csvs_in_one_folder_hash_differently(tmp_path: Path) -> None:
    _images(tmp_path)
    all4 = load_dataset(_csv(tmp_path / "all.csv", [(0, 0), (1, 1), (2, 0), (3, 1)]))
    half = load_dataset(_csv(tmp_path / "half.csv", [(0, 0), (1, 1)]))
    relabelled = load_dataset(_csv(tmp_path / "relabel.csv", [(0, 1), (1, 1), (2, 0), (3, 1)]))
    assert all4.path == half.path  # the folder is all a report used to record
    hashes = {dataset_sha256(d) for d in (all4, half, relabelled)}
    assert len(hashes) == 3 and all(len(h) == 64 for h in hashes)


def test_hash_follows_content_not_file_times_or_csv_layout(tmp_path: Path) -> None:
    _images(tmp_path)
    before = dataset_sha256(load_dataset(_csv(tmp_path / "a.csv", [(0, 0), (1, 1)])))
    # The same rows written with CRLF line ends and a later mtime: the same data.
    (tmp_path / "b.csv").write_bytes(b"filepath,label\r\nimg/0.png,0\r\nimg/1.png,1\r\n")
    os.utime(tmp_path / "img" / "0.png", (1, 1))
    assert dataset_sha256(load_dataset(tmp_path / "b.csv")) == before
    # One pixel changed in one image: different data.
    Image.new("RGB", (4, 4), (1, 2, 3)).save(tmp_path / "img" / "0.png")
    assert dataset_sha256(load_dataset(tmp_path / "a.csv")) != before
