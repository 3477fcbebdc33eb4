"""A second `python -m core run` into the same --out measures its own inputs, not the first's."""

from __future__ import annotations

import csv
import hashlib
import json
import time
from pathlib import Path

import pytest

from tests.core.conftest import unlabelled_copy, write_tiny_images
from tests.core.test_cli import run_cli
from tests.core.test_cli_archives import zip_folder

pytestmark = pytest.mark.slow


def _zipped_images(root: Path, *, per_class: int, seed: int) -> Path:
    """A zip of unlabelled class-noise images (random weights are near chance on labels)."""
    csv_path = write_tiny_images(root / "labelled", per_class=per_class, seed=seed)
    folder = unlabelled_copy(csv_path, root / "unlabelled").parent
    return zip_folder(folder, root / f"images-{per_class}.zip", prefix="set")


def _relpaths(zip_root: Path) -> list[str]:
    with (zip_root / "unlabelled" / "unlabelled.csv").open(encoding="utf-8") as f:
        return sorted(row["filepath"] for row in csv.DictReader(f))


def _run(model: Path, data: Path, modes: str, out: Path, home: Path) -> dict:  # type: ignore[type-arg]
    done = run_cli(
        "run",
        str(model),
        "--data",
        str(data),
        "--modes",
        modes,
        "--calibration-samples",
        "4",
        "--latency-runs",
        "2",
        "--min-agreement",
        "0",
        "--out",
        str(out),
        home=home,
    )
    assert done.returncode == 0, done.stderr
    return json.loads((out / "report.json").read_text())  # type: ignore[no-any-return]


def test_a_second_run_into_the_same_out_reports_its_own_zips_and_leaves_nothing_of_the_first(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    from core.history.store import open_store

    data_a = _zipped_images(tmp_path / "a", per_class=6, seed=0)  # 24 images
    data_b = _zipped_images(tmp_path / "b", per_class=3, seed=7)  # 12 other images
    model_a = zip_folder(tiny_models["saved_model"], tmp_path / "model_a.zip", prefix="m")
    model_b = zip_folder(tiny_models["logits_saved_model"], tmp_path / "model_b.zip", prefix="m")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # not a run's file: it stays

    first = _run(model_a, data_a, "int8", out, tmp_path)
    assert first["dataset"]["num_samples"] == 24 - 4  # 4 held out for calibration
    assert (out / "int8.tflite").is_file()

    before_second = time.time_ns()
    second = _run(model_b, data_b, "float16", out, tmp_path)

    # The second zip's count, name and content hash, not the first's.
    assert second["dataset"]["num_samples"] == 12  # float16 calibrates on nothing
    assert second["dataset"]["file"] == str(data_b)
    assert second["dataset"]["sha256"] != first["dataset"]["sha256"]
    with (out / "samples.csv").open(encoding="utf-8") as f:
        assert sorted(row["relpath"] for row in csv.DictReader(f)) == _relpaths(tmp_path / "b")
    model_digest = hashlib.sha256(model_b.read_bytes()).hexdigest()[:16]
    assert second["reference"]["path"].startswith(str(out / f"model-{model_digest}"))
    assert second["reference"]["sha256"] != first["reference"]["sha256"]
    assert second["reference"]["outputs_probabilities"] is False  # B emits logits, A softmax

    # Nothing of the first run remains: its variant's files, its extractions, its samples.
    assert [v["name"] for v in second["variants"] if v["role"] != "pivot"] == ["float16"]
    assert not list(out.glob("int8*"))
    stale = [
        str(p.relative_to(out))
        for p in out.rglob("*")
        if p.is_file() and p.name != "notes.txt" and p.stat().st_mtime_ns < before_second
    ]
    assert stale == []
    assert (out / "notes.txt").read_text() == "mine"

    # History lists the folder once, as the second run.
    store = open_store(tmp_path)
    try:
        rows = [r for r in store.list_runs() if r.run_dir.resolve() == out.resolve()]
    finally:
        store.close()
    assert len(rows) == 1
    assert "float16" in rows[0].modes
    assert "int8" not in rows[0].modes
