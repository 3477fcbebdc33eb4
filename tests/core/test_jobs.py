"""Jobs as the dashboard starts them: detached, watchable, cancellable, recovered after a kill."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.history.store import open_store
from core.inputs import rundir
from core.jobs.launch import (
    active_run_id,
    active_runs,
    cancel_run,
    create_run,
    launch_run,
    queue_position,
    read_progress,
    read_status,
    recover_interrupted,
    run_dir,
)
from core.types import JobSpec, RunStatus
from tests.core.store_rows import stored_variants


def wait_for(predicate, *, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def tiny_job(tiny_models: dict[str, Path], tiny_data: Path, **options: object) -> JobSpec:
    return JobSpec(
        model_path=str(tiny_models["saved_model"]),
        data_path=str(tiny_data),
        variants=("float16",),
        latency_runs=3,
        warmup_runs=1,
        name="tiny",
        **options,  # type: ignore[arg-type]
    )


@pytest.mark.slow  # the tiny_models fixture builds real models: TensorFlow
def test_create_run_registers_a_queued_row_before_work(
    workspace: Path, tiny_models: dict[str, Path], tiny_data: Path
) -> None:
    run_id = create_run(tiny_job(tiny_models, tiny_data), home=workspace)
    directory = run_dir(run_id, home=workspace)
    assert read_status(directory)["status"] == "queued"
    assert JobSpec.from_dict(rundir.read_json(directory / rundir.JOB)).variants == ("float16",)
    store = open_store(workspace)
    try:
        row = store.get_run(run_id)
    finally:
        store.close()
    assert row is not None and row.status == RunStatus.QUEUED and row.name == "tiny"


@pytest.mark.slow
def test_launched_run_finishes_detached_and_is_no_longer_active(
    workspace: Path, tiny_models: dict[str, Path], tiny_data: Path
) -> None:
    run_id = create_run(tiny_job(tiny_models, tiny_data), home=workspace)
    launch_run(run_id, home=workspace)
    assert active_run_id(home=workspace) == run_id
    directory = run_dir(run_id, home=workspace)
    wait_for(
        lambda: RunStatus(read_status(directory)["status"]).finished,
        timeout=300,
        what="the run to finish",
    )
    assert read_status(directory)["status"] == "done"
    events = read_progress(directory)
    assert events[-1].step == "done"
    assert any(e.step == "convert" and e.variant == "float16" for e in events)
    assert active_run_id(home=workspace) is None
    report = rundir.read_json(directory / rundir.REPORT)
    assert report["variants"][0]["status"] == "done"
    store = open_store(workspace)
    try:
        assert store.get_run(run_id).status == RunStatus.DONE  # type: ignore[union-attr]
    finally:
        store.close()


@pytest.mark.slow
def test_cancel_stops_the_worker_group_and_marks_the_run(
    workspace: Path, tiny_models: dict[str, Path], tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUANTLENS_FAULT", "hang@convert:float16")
    run_id = create_run(tiny_job(tiny_models, tiny_data), home=workspace)
    launch_run(run_id, home=workspace)
    directory = run_dir(run_id, home=workspace)
    wait_for(
        lambda: any(e.step == "convert" for e in read_progress(directory)),
        timeout=180,
        what="the conversion step",
    )
    worker_pid = read_status(directory)["worker_pid"]
    cancel_run(run_id, home=workspace)
    wait_for(
        lambda: read_status(directory)["status"] == "cancelled", timeout=30, what="cancellation"
    )
    wait_for(
        lambda: not process_group_alive(worker_pid), timeout=60, what="the worker group to exit"
    )
    report = rundir.read_json(directory / rundir.REPORT)
    assert report["variants"][0]["status"] == "cancelled"
    assert active_run_id(home=workspace) is None


def running_an_hour(home: Path, run_id: str, **supervisor: int | None) -> None:
    """Make a created run look as if it had been running for an hour under `supervisor`
    (status.json's supervisor fields), in status.json and in the store."""
    directory = run_dir(run_id, home=home)
    status = read_status(directory)
    status.update({"status": "running", "created": time.time() - 3600, **supervisor})
    rundir.write_json_atomic(directory / rundir.STATUS, status)
    store = open_store(home)
    try:
        store.set_status(run_id, RunStatus.RUNNING)
    finally:
        store.close()


@pytest.mark.slow  # the tiny_models fixture builds real models: TensorFlow
def test_a_run_whose_supervisor_died_becomes_failed_interrupted(
    workspace: Path, tiny_models: dict[str, Path], tiny_data: Path
) -> None:
    run_id = create_run(tiny_job(tiny_models, tiny_data), home=workspace)
    directory = run_dir(run_id, home=workspace)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    running_an_hour(workspace, run_id, supervisor_pid=dead.pid)

    assert recover_interrupted(home=workspace) == [run_id]

    assert read_status(directory) | {"status": "failed", "error": "interrupted"} == read_status(
        directory
    )
    store = open_store(workspace)
    try:
        row = store.get_run(run_id)
    finally:
        store.close()
    assert row is not None and row.status == RunStatus.FAILED and row.error == "interrupted"


@pytest.mark.slow  # the tiny_models fixture builds real models: TensorFlow
def test_a_live_supervisor_is_not_marked_interrupted(
    workspace: Path, tiny_models: dict[str, Path], tiny_data: Path
) -> None:
    run_id = create_run(tiny_job(tiny_models, tiny_data), home=workspace)
    directory = run_dir(run_id, home=workspace)
    running_an_hour(workspace, run_id, supervisor_pid=os.getpid())
    assert recover_interrupted(home=workspace) == []
    assert read_status(directory)["status"] == "running"


@pytest.mark.slow  # the tiny_models fixture builds real models: TensorFlow
def test_a_supervisor_pid_now_held_by_another_process_is_interrupted(
    workspace: Path, tiny_models: dict[str, Path], tiny_data: Path
) -> None:
    """status.json names the supervisor by pid and start: a live process that got the pid later
    (here this test process, with another start) does not keep the run running forever."""
    from core import posix
    from core.runfolder import protocol

    run_id = create_run(tiny_job(tiny_models, tiny_data), home=workspace)
    directory = run_dir(run_id, home=workspace)
    me, started = os.getpid(), posix.process_started(os.getpid())
    assert started is not None
    assert protocol.supervisor_fields(me) == {"supervisor_pid": me, "supervisor_started": started}
    # The recorded supervisor had this test's pid but started a tick later.
    running_an_hour(workspace, run_id, supervisor_pid=me, supervisor_started=started + 1)

    assert recover_interrupted(home=workspace) == [run_id]
    assert read_status(directory)["status"] == "failed"
    assert read_status(directory)["error"] == "interrupted"


@pytest.mark.slow
def test_a_models_signature_is_read_once_then_remembered(
    workspace: Path, tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.jobs import launch as jobs

    first = jobs.inspect_model(str(tiny_models["keras"]))
    assert (first.height, first.width, first.channels, first.num_classes) == (16, 16, 3, 4)

    def no_worker(*args: object, **kwargs: object) -> None:
        raise AssertionError("the worker was started again")

    monkeypatch.setattr(jobs.subprocess, "run", no_worker)
    assert jobs.inspect_model(str(tiny_models["keras"])) == first
    # Another option (trusted) is another answer: it is not taken from the cache.
    with pytest.raises(AssertionError, match="started again"):
        jobs.inspect_model(str(tiny_models["keras"]), trusted=True)


def variants_by_name(directory: Path) -> dict[str, dict]:
    report = rundir.read_json(directory / rundir.REPORT)
    return {v["name"]: v for v in report["variants"]}


@pytest.mark.slow
def test_recovery_finishes_report_status_and_store_and_stops_the_orphan_worker(
    workspace: Path, tiny_models: dict[str, Path], tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor is killed mid-run (server crash): recovery leaves no variant pending or
    running anywhere, and the worker it left behind does not go on writing (issue 9.3)."""
    monkeypatch.setenv("QUANTLENS_FAULT", "hang@convert:int8")
    job = tiny_job(tiny_models, tiny_data)
    job = JobSpec.from_dict({**job.to_dict(), "variants": ["float16", "int8"]})
    run_id = create_run(job, home=workspace)
    launch_run(run_id, home=workspace)
    directory = run_dir(run_id, home=workspace)
    wait_for(
        lambda: any(e.step == "convert" and e.variant == "int8" for e in read_progress(directory)),
        timeout=240,
        what="the int8 conversion",
    )
    status = read_status(directory)
    os.kill(status["supervisor_pid"], 9)
    # Generous limits for events that take a second on a quiet machine (wait_for returns as soon
    # as they happen): a killed worker's group lasts until it is reaped, and with two test
    # workers on a loaded machine the 10 s these waits had ran out once.
    wait_for(lambda: not _alive(status["supervisor_pid"]), timeout=60, what="the supervisor")
    assert variants_by_name(directory)["int8"]["status"] in ("pending", "running")

    assert recover_interrupted(home=workspace) == [run_id]

    wait_for(lambda: not process_group_alive(status["worker_pid"]), timeout=60, what="the worker")
    assert read_status(directory)["status"] == "failed"
    assert read_status(directory)["error"] == "interrupted"
    report = rundir.read_json(directory / rundir.REPORT)
    assert report["run"]["status"] == "failed"
    states = {v["name"]: (v["status"], v["error"]) for v in report["variants"]}
    assert states["int8"] == ("failed", "interrupted")
    assert states["float16"][0] in ("done", "failed")
    float16 = next(v for v in report["variants"] if v["name"] == "float16")
    if float16["status"] == "done":  # finished, but timing runs last: it says why it has none
        assert float16.get("latency_ms") is None
        assert float16["latency_note"].startswith(
            "not timed: the run failed before its timing step"
        )
    assert all(s not in ("pending", "running") for s, _ in states.values())
    store = open_store(workspace)
    try:
        row = store.get_run(run_id)
        stored = {v["name"]: v["status"] for v in stored_variants(store, run_id)}
    finally:
        store.close()
    assert row is not None and (row.status, row.error) == (RunStatus.FAILED, "interrupted")
    assert stored == {name: s for name, (s, _) in states.items()}
    assert active_run_id(home=workspace) is None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_a_second_run_waits_its_turn_and_a_queued_run_can_be_cancelled(
    workspace: Path, tiny_models: dict[str, Path], tiny_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two Runs pressed at once: the second is queued (position 1) until the first ends, so
    their latencies never share the cores; a third is cancelled while queued (issue 9.2)."""
    monkeypatch.setenv("QUANTLENS_FAULT", "hang@convert:float16")
    first = create_run(tiny_job(tiny_models, tiny_data), home=workspace)
    job = JobSpec.from_dict({**tiny_job(tiny_models, tiny_data).to_dict(), "variants": ["dynamic"]})
    second = create_run(job, home=workspace)
    third = create_run(job, home=workspace)
    for run_id in (first, second, third):
        launch_run(run_id, home=workspace)
    first_dir, second_dir, third_dir = (run_dir(r, home=workspace) for r in (first, second, third))
    wait_for(
        lambda: any(e.step == "convert" for e in read_progress(first_dir)),
        timeout=240,
        what="the first run's conversion",
    )
    time.sleep(2)  # the others poll twice a second: give them time to (wrongly) start
    assert read_status(second_dir)["status"] == "queued"
    assert "worker_pid" not in read_status(second_dir)
    assert queue_position(second, home=workspace) == 1
    assert queue_position(third, home=workspace) == 2
    assert [r.id for r in active_runs(home=workspace)] == [first, second, third]

    cancel_run(third, home=workspace)
    wait_for(lambda: read_status(third_dir)["status"] == "cancelled", timeout=30, what="cancel")
    assert read_status(third_dir)["error"] == "cancelled while queued"
    cancel_run(first, home=workspace)
    wait_for(
        lambda: read_status(second_dir)["status"] == "done", timeout=300, what="the second run"
    )
    assert read_status(first_dir)["status"] == "cancelled"
    assert read_status(second_dir)["started"] >= read_status(first_dir)["finished"]
    store = open_store(workspace)
    try:
        statuses = [store.get_run(r).status for r in (first, second, third)]  # type: ignore[union-attr]
    finally:
        store.close()
    assert statuses == [RunStatus.CANCELLED, RunStatus.DONE, RunStatus.CANCELLED]


def test_default_run_name_is_model_and_time() -> None:
    from datetime import datetime

    from core.jobs.launch import default_run_name

    at = datetime(2026, 12, 1, 14, 3, 59)
    assert default_run_name("/data/models/saved_model", at) == "saved_model · 14:03"
    assert default_run_name("/data/mobilenet_v2.keras", at) == "mobilenet_v2 · 14:03"
    assert default_run_name("/uploads/classifier.ZIP", at) == "classifier · 14:03"


def test_an_unnamed_run_gets_the_default_name_in_job_and_store(tmp_path: Path) -> None:
    from datetime import datetime

    before = datetime.now()
    job = JobSpec(model_path=str(tmp_path / "saved_model"), data_path=str(tmp_path / "d.csv"))
    run_id = create_run(job, home=tmp_path)
    after = datetime.now()
    stored_job = JobSpec.from_dict(rundir.read_json(run_dir(run_id, home=tmp_path) / rundir.JOB))
    store = open_store(tmp_path)
    try:
        row = store.get_run(run_id)
    finally:
        store.close()
    # Either minute is right if the clock turned while the run was created.
    expected = {f"saved_model · {t:%H:%M}" for t in (before, after)}
    assert row is not None and row.name in expected and stored_job.name == row.name


def test_a_worker_that_ends_while_recovery_looks_at_it_still_has_its_group_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The orphan worker dies (its parent-death signal) between recovery's "does it run?" and
    its look at the command line: the zombie's command line is empty, yet the process it
    started must not outlive it. A shell stands in for the worker, exits, and leaves a sleep
    in its group, unreaped, so it stays a zombie; pid_alive answers as it did a moment before."""
    from core import posix
    from core.jobs import launch

    still_running = posix.pid_alive
    leader = subprocess.Popen(
        ["sh", "-c", "sleep 600 & echo $!; exit 0"],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert leader.stdout is not None
    child = int(leader.stdout.readline())
    deadline = time.time() + 30
    while still_running(leader.pid):
        assert time.time() < deadline, "the stand-in worker did not exit"
        time.sleep(0.05)
    rundir.write_json_atomic(
        tmp_path / rundir.STATUS, {"status": "running", "worker_pid": leader.pid}
    )
    monkeypatch.setattr(posix, "pid_alive", lambda pid: True)
    try:
        launch._stop_orphan_worker(tmp_path)
        deadline = time.time() + 30
        while still_running(child) and time.time() < deadline:
            time.sleep(0.05)
        assert not still_running(child), "the dead worker's group was left running"
    finally:
        if still_running(child):
            os.kill(child, 9)
        leader.wait(timeout=30)
