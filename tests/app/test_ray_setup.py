"""Setup's engine choice (issue 14): offered only when the operator configured a Ray cluster
(QUANTLENS_RAY_ADDRESS), and the choice reaches the job and its reproduce command."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from core.engine.pipeline import reproduce_command
from core.jobs import launch as jobs
from core.types import JobSpec
from tests.app.conftest import OpenPage
from ui import keys

RAY_ADDRESS_ENV = "QUANTLENS_RAY_ADDRESS"


def _closed_port_address() -> str:
    """An address on this machine nobody listens on: the run fails fast at the engine."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def test_without_an_address_setup_offers_no_engine_choice(
    home: Path, open_page: OpenPage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(RAY_ADDRESS_ENV, raising=False)
    (home / "demo-build.pid").write_text("999999")  # no demo: Setup opens on server paths
    at = open_page("setup")
    assert keys.SETUP_ENGINE not in [r.key for r in at.radio]
    assert not [r for r in at.radio if r.label == "Engine"]


def test_with_an_address_setup_offers_local_or_that_cluster(
    home: Path, open_page: OpenPage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RAY_ADDRESS_ENV, "10.0.0.5:6379")
    (home / "demo-build.pid").write_text("999999")
    at = open_page("setup")
    engine = at.radio(key=keys.SETUP_ENGINE)
    assert engine.options == ["Local (this machine)", "Ray cluster at 10.0.0.5:6379"]
    assert engine.value == "local"  # the cluster is a choice, never the default


@pytest.mark.slow
def test_the_ray_choice_reaches_the_job_and_its_command(
    fresh_demo_home: Path, open_page: OpenPage, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = _closed_port_address()
    monkeypatch.setenv(RAY_ADDRESS_ENV, address)
    at = open_page("setup", timeout=180)
    at.multiselect(key=keys.SETUP_MODES).set_value(["float16"]).run()
    at.radio(key=keys.SETUP_ENGINE).set_value("ray").run()
    at.button(key=keys.SETUP_RUN).click().run(timeout=60)
    rid = at.session_state[keys.SELECTED_RUN]
    run_dir = fresh_demo_home / "runs" / rid
    job = json.loads((run_dir / "job.json").read_text())
    assert (job["engine"], job["ray_address"]) == ("ray", address)
    command = reproduce_command(JobSpec.from_dict(job))
    assert command.endswith(f"--engine ray --ray-address {address}")
    # Nobody listens there: the worker names the address in one line, in seconds.
    deadline = time.time() + 300
    while jobs.active_run_id() is not None and time.time() < deadline:
        time.sleep(1)
    status = jobs.read_status(run_dir)
    assert status["status"] == "failed"
    assert status["error"].startswith(f"cannot reach the Ray cluster at {address} (")
    assert "\n" not in status["error"]
