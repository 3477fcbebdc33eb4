"""core.inputs.rundir: the run-folder layout, the workspace location and atomic writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from core.inputs import rundir


def test_variant_files_are_named_after_the_variant(tmp_path: Path) -> None:
    assert (
        rundir.tflite_path(tmp_path, rundir.FileId("int8-uint8")) == tmp_path / "int8-uint8.tflite"
    )
    assert rundir.probs_path(tmp_path, rundir.FileId("int8")) == tmp_path / "int8.probs.npy"
    assert (
        rundir.variant_samples_path(tmp_path, rundir.FileId("int8"))
        == tmp_path / "int8.samples.csv"
    )
    assert (
        rundir.latency_path(tmp_path, rundir.FileId("float16")) == tmp_path / "float16.latency.npy"
    )
    # the reference's arrays follow the same scheme, so readers need no special case
    assert rundir.probs_path(tmp_path, rundir.FileId("reference")).name == rundir.REFERENCE_PROBS
    assert (
        rundir.latency_path(tmp_path, rundir.FileId("reference")).name == rundir.REFERENCE_LATENCY
    )


def test_workspace_follows_quantlens_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUANTLENS_HOME", str(tmp_path / "ws"))
    assert rundir.workspace_home() == (tmp_path / "ws").resolve()
    assert rundir.runs_root() == (tmp_path / "ws").resolve() / "runs"
    assert rundir.cache_root() == (tmp_path / "ws").resolve() / "cache"
    assert rundir.runs_root(tmp_path / "other") == tmp_path / "other" / "runs"
    monkeypatch.delenv("QUANTLENS_HOME")
    monkeypatch.chdir(tmp_path)
    assert rundir.workspace_home() == (tmp_path / "workspace").resolve()


def test_dataset_root_is_the_folder_sample_paths_are_relative_to(tmp_path: Path) -> None:
    csv = tmp_path / "data.csv"
    csv.write_text("filepath,label\n")
    assert rundir.dataset_root({"path": str(tmp_path)}) == tmp_path
    assert rundir.dataset_root({"path": str(csv)}) == tmp_path  # an older report naming the CSV
    assert rundir.dataset_root({"path": str(tmp_path / "gone.csv")}) == tmp_path
    assert rundir.dataset_root({}) is None


def test_write_atomic_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "report.json"
    rundir.write_json_atomic(target, {"a": 1})
    rundir.write_json_atomic(target, {"a": 2, "name": "<b>ü</b>"})
    assert rundir.read_json(target) == {"a": 2, "name": "<b>ü</b>"}
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]


def test_write_atomic_gives_the_mode_of_a_plain_open(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        rundir.write_atomic(tmp_path / "x.bin", b"\x00\x01")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.bin").stat().st_mode) == 0o644  # not mkstemp's 0600


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    rundir.write_json_atomic(target, {"kept": True})
    with pytest.raises(TypeError):
        rundir.write_json_atomic(target, {"bad": object()})  # not JSON: fails before writing
    with pytest.raises(TypeError):
        rundir.write_atomic(target, "text, not bytes")  # type: ignore[arg-type]
    assert rundir.read_json(target) == {"kept": True}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
