"""core.inputs.rundir: the run-folder layout, the workspace location and atomic writes."""

from __future__ import annotations

import os
import stat
import sys
import threading
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


def test_atomic_writes_never_open_the_umask_to_other_threads(tmp_path: Path) -> None:
    """Threads creating folders while others write atomically: no folder comes out
    world-writable (the umask is never set to 0, even for a moment), and every written file
    has the mode a plain open() gives."""
    folders = tmp_path / "folders"
    folders.mkdir()
    writers_done = threading.Event()
    made: list[Path] = []

    def make_folders(worker: int) -> None:
        i = 0
        while not writers_done.is_set():
            folder = folders / f"{worker}-{i}"
            folder.mkdir()
            made.append(folder)
            i += 1

    def write_files(worker: int) -> None:
        for i in range(200):
            rundir.write_atomic(tmp_path / f"w{worker}" / f"{i % 7}.bin", b"x")

    old_umask = os.umask(0o022)
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, as a busy server does at some point
    try:
        makers = [threading.Thread(target=make_folders, args=(n,)) for n in range(2)]
        writers = [threading.Thread(target=write_files, args=(n,)) for n in range(4)]
        for thread in makers + writers:
            thread.start()
        for thread in writers:
            thread.join()
        writers_done.set()
        for thread in makers:
            thread.join()
    finally:
        sys.setswitchinterval(old_interval)
        os.umask(old_umask)
    modes = {stat.S_IMODE(folder.stat().st_mode) for folder in made}
    assert modes == {0o755}, sorted(oct(m) for m in modes)
    written = {stat.S_IMODE(p.stat().st_mode) for p in tmp_path.glob("w*/*.bin")}
    assert written == {0o644}
    assert not list(tmp_path.glob("w*/.*.tmp"))  # no temporary file left behind


def _process_umask() -> int:
    """The umask as the kernel reports it, read without setting it (os.umask cannot)."""
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    pytest.skip("this kernel does not report the umask in /proc/self/status")


def test_the_atomic_writer_never_changes_the_process_umask(tmp_path: Path) -> None:
    """What any other thread would see between the writer's system calls: always 022.

    The threaded test above catches the race only now and then; this one looks after every
    call the writer makes into C (os.umask, os.open, fsync, ...), so it never misses it.
    """
    seen: set[int] = set()

    def after_each_c_call(frame: object, event: str, arg: object) -> None:
        if event == "c_return":
            seen.add(_process_umask())

    old_umask = os.umask(0o022)
    _process_umask()  # skips before profiling when the kernel does not say
    sys.setprofile(after_each_c_call)
    try:
        rundir.write_json_atomic(tmp_path / "status.json", {"status": "running"})
    finally:
        sys.setprofile(None)
        os.umask(old_umask)
    assert seen == {0o022}, sorted(oct(m) for m in seen)
    assert stat.S_IMODE((tmp_path / "status.json").stat().st_mode) == 0o644
