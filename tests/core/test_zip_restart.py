"""A zipped data set through the real CLI: zipped at the root or in a wrapper folder, and read
again by a worker the supervisor restarted after a crash, the run sees the same inputs."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from tests.core.test_cli import run_cli

pytestmark = pytest.mark.slow

INPUT_FILES = ("labels.txt", "samples.csv", "reference.probs.npy", "float32.probs.npy")


def _zip_class_folders(images: Path, target: Path, *, prefix: str) -> Path:
    with zipfile.ZipFile(target, "w") as zf:
        for path in sorted(images.rglob("*.png")):
            zf.write(path, f"{prefix}{path.relative_to(images).as_posix()}")
    return target


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_restarted_worker_and_a_wrapper_zip_see_the_inputs_of_a_root_zip(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    images = tiny_data.parent / "images"  # c0/ … c3/: one folder per class
    classes = sorted(p.name for p in images.iterdir())
    root_zip = _zip_class_folders(images, tmp_path / "root.zip", prefix="")
    wrapped_zip = _zip_class_folders(images, tmp_path / "wrapped.zip", prefix="dataset/")
    common = ("--modes", "float16,float32", "--min-agreement", "0", "--latency-runs", "3")
    model = str(tiny_models["saved_model"])

    plain = run_cli(
        "run", model, "--data", str(root_zip), *common, "--out", str(tmp_path / "plain"),
        home=tmp_path,
    )  # fmt: skip
    # Exit 1 is the tiny random model's NO VERDICT (near chance on the class folders' labels);
    # what matters here is that every variant ran.
    assert plain.returncode in (0, 1), plain.stderr
    plain_report = json.loads((tmp_path / "plain" / "report.json").read_text())
    assert {v["status"] for v in plain_report["variants"]} == {"done"}
    # float16's conversion segfaults: the supervisor starts a fresh worker for float32, which
    # resolves the zipped data set a second time from the run folder.
    restarted = run_cli(
        "run", model, "--data", str(wrapped_zip), *common, "--out", str(tmp_path / "restarted"),
        home=tmp_path, env={"QUANTLENS_FAULT": "segv@convert:float16"},
    )  # fmt: skip
    assert restarted.returncode == 1, restarted.stderr
    report = json.loads((tmp_path / "restarted" / "report.json").read_text())
    status = {v["name"]: v["status"] for v in report["variants"]}
    assert status == {"float16": "crashed", "float32": "done"}
    progress = (tmp_path / "restarted" / "progress.jsonl").read_text()
    worker_starts = progress.count("reading the data set and the model")  # once per worker
    assert worker_starts >= 2  # the data set really was resolved by a second worker

    assert (tmp_path / "restarted" / "labels.txt").read_text().split() == classes
    assert report["dataset"]["class_names"] == classes
    for name in INPUT_FILES:
        assert _digest(tmp_path / "restarted" / name) == _digest(tmp_path / "plain" / name), name
