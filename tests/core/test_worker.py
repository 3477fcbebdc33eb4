"""core.jobs.worker's pure helpers: the status file, the progress log and the memory limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.inputs import rundir
from core.jobs.worker import progress_writer
from core.runfolder.protocol import MEMORY_LIMIT_ENV, write_status
from core.types import ProgressEvent, RunStatus

REPO = Path(__file__).resolve().parents[2]


def test_write_status_keeps_other_fields_and_stamps_the_finish(tmp_path: Path) -> None:
    rundir.write_json_atomic(tmp_path / rundir.STATUS, {"status": "queued", "pid": 4242})
    write_status(tmp_path, RunStatus.RUNNING)
    running = rundir.read_json(tmp_path / rundir.STATUS)
    assert running == {"status": "running", "pid": 4242, "error": None}

    before = time.time()
    write_status(tmp_path, RunStatus.FAILED, error="the model has two inputs; pick one")
    failed = rundir.read_json(tmp_path / rundir.STATUS)
    assert failed["status"] == "failed" and failed["pid"] == 4242
    assert failed["error"] == "the model has two inputs; pick one"
    assert before <= failed["finished"] <= time.time()


def test_write_status_creates_the_file(tmp_path: Path) -> None:
    write_status(tmp_path, RunStatus.DONE)
    status = rundir.read_json(tmp_path / rundir.STATUS)
    assert status["status"] == "done" and status["error"] is None and "finished" in status
    assert [p.name for p in tmp_path.iterdir()] == [rundir.STATUS]  # no temp file left


def test_progress_writer_appends_one_json_line_per_event(tmp_path: Path) -> None:
    write = progress_writer(tmp_path)
    events = [
        ProgressEvent("convert", 0.0, "converting to int8", "int8", time=1.5),
        ProgressEvent("done", 1.0, "all variants finished", time=2.5),
    ]
    for event in events:
        write(event)
    lines = (tmp_path / rundir.PROGRESS).read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {
            "step": "convert",
            "fraction": 0.0,
            "message": "converting to int8",
            "variant": "int8",
            "time": 1.5,
        },
        {
            "step": "done",
            "fraction": 1.0,
            "message": "all variants finished",
            "variant": None,
            "time": 2.5,
        },
    ]


def _limit_in_child(value: str | None) -> list[int]:
    """RLIMIT_AS (soft, hard) after apply_memory_limit, in a child: never limit this process."""
    env = {k: v for k, v in os.environ.items() if k != MEMORY_LIMIT_ENV}
    if value is not None:
        env[MEMORY_LIMIT_ENV] = value
    code = (
        "import json, resource; from core.jobs.worker import apply_memory_limit; "
        "apply_memory_limit(); print(json.dumps(resource.getrlimit(resource.RLIMIT_AS)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    limits: list[int] = json.loads(out.stdout)
    return limits


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS is enforced on Linux")
def test_memory_limit_is_read_from_the_environment_in_bytes() -> None:
    import resource

    unlimited = [resource.RLIM_INFINITY, resource.RLIM_INFINITY]
    two_gib = 2 * 1024**3
    assert _limit_in_child(str(two_gib)) == [two_gib, two_gib]
    if list(resource.getrlimit(resource.RLIMIT_AS)) == unlimited:
        assert _limit_in_child(None) == unlimited  # unset: no limit added
        assert _limit_in_child("") == unlimited  # empty: no limit added
