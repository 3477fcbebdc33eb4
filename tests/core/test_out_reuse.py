"""Creating a run in a folder that holds an earlier run (the CLI's --out): its files go, other
files stay, its History row goes; a run still queued or running there is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import QuantLensError
from core.history.store import open_store
from core.inputs import rundir
from core.jobs.launch import create_run
from core.jobs.outcome import finish_run
from core.types import JobSpec, RunStatus


def test_a_reused_folder_loses_the_earlier_runs_files_and_row_only(
    workspace: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    job = JobSpec(model_path="m.keras", data_path="d.csv", name="first")
    first = create_run(job, home=workspace, directory=out)
    with pytest.raises(QuantLensError, match=r"still queued") as info:
        create_run(job, home=workspace, directory=out)
    assert "\n" not in str(info.value) and "another --out" in str(info.value)
    finish_run(out, RunStatus.DONE, None, home=workspace)
    # What the first run left: its variant files, an extraction, caches; and a user's file.
    written = ["int8.tflite", "int8-k1234abcd.layers.csv", "samples.csv", ".decoded.u8"]
    for name in written:
        (out / name).write_bytes(b"x")
    (out / "data-0123456789abcdef" / "set").mkdir(parents=True)
    (out / ".data.partial-12-ab").mkdir()
    (out / ".report.json.x1y2.tmp").write_bytes(b"x")
    # A user's own files and folders, even ones named like a run's, stay.
    mine = ["notes.txt", "model.keras", ".gitignore", "data", "model", ".git", "data-old"]
    for name in mine:
        (out / name).mkdir() if "." not in name[1:] else (out / name).write_text("mine")
    second = create_run(job, home=workspace, directory=out)
    assert sorted(p.name for p in out.iterdir()) == sorted([*mine, rundir.JOB, rundir.STATUS])
    store = open_store(workspace)
    try:
        assert store.get_run(first) is None
        assert store.get_run(second) is not None
    finally:
        store.close()


def test_every_hidden_file_the_worker_writes_is_known_to_the_clearing() -> None:
    from core.runfolder import protocol

    hidden = {
        protocol.WORKER_TMP,
        protocol.DECODED_CACHE,
        protocol.DECODE_STATE,
        protocol.CALIBRATION_CACHE,
        protocol.REFERENCE_OUTPUTS,
        protocol.CONVERTING,
    }
    assert hidden <= rundir.HIDDEN_RUN_FILES
