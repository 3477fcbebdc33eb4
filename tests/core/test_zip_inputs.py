"""Zipped data sets have one path to a data root: same samples at the root or in a wrapper,
the same samples again for a restarted worker, and the workspace always allowed."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.engine.pipeline import resolve_inputs
from core.errors import QuantLensError, UnsafeArchive
from core.inputs.archives import extract_once
from core.inputs.datasets import load_dataset
from core.types import JobSpec

CLASSES = ("cat", "dog", "owl")


def _class_folders(root: Path) -> Path:
    """Three class folders of two PNGs each (class order cat, dog, owl), no labels.txt."""
    for label, name in enumerate(CLASSES):
        for i in range(2):
            path = root / name / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4, 3), 40 * label + i, dtype=np.uint8)).save(path)
    return root


def _csv_set(root: Path) -> Path:
    """A CSV data set in `img/` with class names in labels.txt, as the digits48 report had."""
    rows = ["filepath,label"]
    for label, name in enumerate(CLASSES):
        for i in range(2):
            rel = f"img/{name}{i}.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((4, 4), 50 * label + i, dtype=np.uint8)).save(root / rel)
            rows.append(f"{rel},{label}")
    (root / "val.csv").write_text("\n".join(rows) + "\n")
    (root / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def _zip(folder: Path, target: Path, *, prefix: str) -> Path:
    with zipfile.ZipFile(target, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{prefix}{path.relative_to(folder).as_posix()}")
    return target


def _as_seen(ds) -> tuple[object, ...]:  # type: ignore[no-untyped-def]
    """What a run reads from a data set, independent of where it was extracted."""
    return (
        ds.kind,
        ds.class_names,
        [(s.relpath, s.label) for s in ds.samples],
        [(s.relpath, s.reason) for s in ds.skipped],
    )


@pytest.mark.parametrize("build", [_class_folders, _csv_set])
def test_root_and_wrapper_zips_of_the_same_files_read_the_same(
    build,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    files = build(tmp_path / "files")
    seen = []
    for name, prefix in (("root", ""), ("wrapped", "digits48/"), ("deep", "export/digits48/")):
        archive = _zip(files, tmp_path / f"{name}.zip", prefix=prefix)
        seen.append(_as_seen(load_dataset(archive, extract_dir=tmp_path / f"{name}-x")))
    assert seen[0] == seen[1] == seen[2]
    _kind, class_names, samples, skipped = seen[0]
    assert class_names == CLASSES and not skipped
    assert [label for _, label in samples] == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("build", [_class_folders, _csv_set])
def test_a_restarted_worker_reads_the_zip_exactly_as_the_first(
    build,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    archive = _zip(build(tmp_path / "files"), tmp_path / "data.zip", prefix="data/")
    model = tmp_path / "model.keras"  # resolve_inputs only checks where a plain model file is
    model.write_bytes(b"not read here")
    job = JobSpec(model_path=str(model), data_path=str(archive))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    first = resolve_inputs(job, run_dir)
    second = resolve_inputs(job, run_dir)  # what the supervisor's fresh worker does
    assert second == first
    assert first.dataset.class_names == CLASSES
    assert [s.label for s in second.dataset.samples] == [0, 0, 1, 1, 2, 2]


def test_roots_set_elsewhere_still_allow_the_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "workspace"
    monkeypatch.setenv("QUANTLENS_HOME", str(home))
    (tmp_path / "unrelated").mkdir()
    monkeypatch.setenv("QUANTLENS_ALLOWED_ROOTS", str(tmp_path / "unrelated"))
    upload = home / "uploads" / "0123456789abcdef"
    upload.mkdir(parents=True)
    archive = _zip(_class_folders(tmp_path / "files"), upload / "set.zip", prefix="set/")
    model = home / "demo" / "model" / "digits.keras"  # where the demo model lives
    model.parent.mkdir(parents=True)
    model.write_bytes(b"not read here")
    run_dir = home / "runs" / "r1"
    run_dir.mkdir(parents=True)
    inputs = resolve_inputs(JobSpec(model_path=str(model), data_path=str(archive)), run_dir)
    assert inputs.dataset.class_names == CLASSES
    # ... and a path outside both is still refused, naming the folders that are allowed
    outside = _zip(_class_folders(tmp_path / "more"), tmp_path / "outside.zip", prefix="")
    with pytest.raises(QuantLensError, match="outside the allowed folders") as info:
        resolve_inputs(JobSpec(model_path=str(model), data_path=str(outside)), run_dir)
    assert str(home.resolve()) in str(info.value) and "\n" not in str(info.value)


def test_extract_once_reuses_a_complete_extraction_and_leaves_nothing_when_refused(
    tmp_path: Path,
) -> None:
    archive = _zip(_class_folders(tmp_path / "files"), tmp_path / "a.zip", prefix="w/")
    dest = tmp_path / "x" / "data"
    assert extract_once(archive, dest) == dest
    before = sorted(p.relative_to(dest) for p in dest.rglob("*"))
    archive.unlink()  # a complete extraction is reused without reading the archive again
    assert extract_once(archive, dest) == dest
    assert sorted(p.relative_to(dest) for p in dest.rglob("*")) == before
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("ok.png", b"x")
        zf.writestr("../escape.txt", b"x")
    with pytest.raises(UnsafeArchive):
        extract_once(evil, tmp_path / "y" / "data")
    assert list((tmp_path / "y").iterdir()) == []  # no partial folder a later call could reuse


def test_another_zip_into_the_same_run_folder_is_read_not_the_first(tmp_path: Path) -> None:
    """A reused --out: the second archive's samples, not the first archive's extraction."""
    first = _zip(_class_folders(tmp_path / "a"), tmp_path / "a.zip", prefix="data/")
    second_files = _class_folders(tmp_path / "b")
    shutil.copytree(second_files / "cat", second_files / "zebra")
    second = _zip(second_files, tmp_path / "b.zip", prefix="data/")
    extract_dir = tmp_path / "run" / "data"
    a = load_dataset(first, extract_dir=extract_dir)
    b = load_dataset(second, extract_dir=extract_dir)
    assert len(b.samples) == len(a.samples) + 2  # zebra's two images
    assert b.path != a.path
    # The same bytes again (a restarted worker) reuse their own extraction.
    assert load_dataset(second, extract_dir=extract_dir).path == b.path
