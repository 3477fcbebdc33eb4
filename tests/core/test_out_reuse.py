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
    (out / "notes.txt").write_text("mine")
    (out / "model.keras").write_bytes(b"the user's model")
    second = create_run(job, home=workspace, directory=out)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["notes.txt", "model.keras", rundir.JOB, rundir.STATUS]
    )
    store = open_store(workspace)
    try:
        assert store.get_run(first) is None
        assert store.get_run(second) is not None
    finally:
        store.close()
