"""Zipped models and data sets through `python -m core run`: found, extracted safely, or refused."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from tests.core.conftest import unlabelled_copy
from tests.core.test_cli import run_cli

pytestmark = pytest.mark.slow


def zip_folder(folder: Path, target: Path, *, prefix: str, junk: bool = False) -> Path:
    with zipfile.ZipFile(target, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{prefix}/{path.relative_to(folder)}")
        if junk:
            zf.writestr(f"__MACOSX/{prefix}/._saved_model.pb", b"\x00\x05\x16\x07junk")
            zf.writestr(f"{prefix}/.DS_Store", b"junk")
    return target


def test_zipped_saved_model_in_a_wrapper_folder_and_zipped_data_run(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    model_zip = zip_folder(
        tiny_models["saved_model"], tmp_path / "model.zip", prefix="export/my_model", junk=True
    )
    # Unlabelled: the tiny model is random, so on labels it is near chance and cannot PASS.
    unlabelled = unlabelled_copy(tiny_data, tmp_path / "unlabelled").parent
    data_zip = zip_folder(unlabelled, tmp_path / "data.zip", prefix="dataset")
    out = tmp_path / "out"
    done = run_cli(
        "run",
        str(model_zip),
        "--data",
        str(data_zip),
        "--modes",
        "float16",
        "--min-agreement",
        "0",
        "--latency-runs",
        "3",
        "--out",
        str(out),
        home=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    model_folder = next(out.glob("model-*"))  # named by the zip's content hash
    assert report["reference"]["path"] == str(model_folder / "export" / "my_model")
    assert report["dataset"]["num_samples"] == 24
    assert not (model_folder / "__MACOSX").exists()


def test_an_archive_with_a_dotdot_member_is_refused_before_anything_is_written(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("data/data.csv", "filepath,label\na.png,0\n")
        zf.writestr("data/../../escaped.txt", "gotcha")
    out = tmp_path / "out"
    done = run_cli(
        "run",
        str(tiny_models["saved_model"]),
        "--data",
        str(evil),
        "--modes",
        "float16",
        "--out",
        str(out),
        home=tmp_path,
    )
    assert done.returncode == 2
    error = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(error) == 1 and "data/../../escaped.txt" in error[0]
    assert not (tmp_path / "escaped.txt").exists()
    assert not any((out / "data").rglob("*")) if (out / "data").exists() else True
