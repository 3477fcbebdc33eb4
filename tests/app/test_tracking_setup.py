"""MLflow tracking in the dashboard: Setup's option reaches the job, and Overview says where the
run was logged or, in one line, why logging failed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from core.jobs import launch as jobs
from tests.app.conftest import OpenPage
from tests.app.fixtures import build_run
from ui import keys


def _with_tracking(home: Path, tracking: dict[str, object]) -> None:
    path = home / "runs" / "run-fixture" / "report.json"
    report = json.loads(path.read_text())
    report["tracking"] = tracking
    path.write_text(json.dumps(report))


def test_overview_names_the_mlflow_run(home: Path, open_page: OpenPage) -> None:
    build_run(home)
    _with_tracking(home, {"uri": "http://mlflow.test:5000", "run_id": "abc123", "error": None})
    at = open_page("overview")
    assert "Logged to MLflow: run `abc123` at `http://mlflow.test:5000`." in [
        c.value for c in at.caption
    ]
    assert not [w.value for w in at.warning if "MLflow" in w.value]


def test_overview_says_in_one_line_that_logging_failed(home: Path, open_page: OpenPage) -> None:
    build_run(home)
    _with_tracking(home, {"uri": "http://127.0.0.1:9", "error": "connection refused"})
    at = open_page("overview")
    warnings = [w.value for w in at.warning if "MLflow" in w.value]
    assert warnings == [
        "MLflow logging to http://127.0.0.1:9 failed: connection refused. The run itself is "
        "complete."
    ]


def test_a_tracking_uri_that_is_no_server_blocks_run(home: Path, open_page: OpenPage) -> None:
    (home / "demo-build.pid").write_text("999999")  # no demo: Setup opens on server paths
    at = open_page("setup")
    at.toggle(key=keys.SETUP_MLFLOW).set_value(True).run()
    at.text_input(key=keys.SETUP_MLFLOW_URI).input("/etc/mlflow.db").run()
    assert "Give an http:// or https:// tracking server, or leave it blank." in [
        e.value for e in at.error
    ]
    assert any("an allowed MLflow tracking server" in c.value for c in at.caption)
    assert at.button(key=keys.SETUP_RUN).disabled


def test_a_tracking_server_off_the_operators_allow_list_blocks_run(
    home: Path, open_page: OpenPage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dashboard user must not make the server send models to any address: only the servers
    the operator lists in QUANTLENS_MLFLOW_ALLOWED (none by default) are accepted."""
    (home / "demo-build.pid").write_text("999999")
    at = open_page("setup")
    at.toggle(key=keys.SETUP_MLFLOW).set_value(True).run()
    at.text_input(key=keys.SETUP_MLFLOW_URI).input("http://attacker.example:5000").run()
    errors = [e.value for e in at.error]
    assert any(
        "http://attacker.example:5000 is not an allowed tracking server" in e
        and "QUANTLENS_MLFLOW_ALLOWED" in e
        for e in errors
    ), errors
    assert any("an allowed MLflow tracking server" in c.value for c in at.caption)
    assert at.button(key=keys.SETUP_RUN).disabled

    monkeypatch.setenv("QUANTLENS_MLFLOW_ALLOWED", "http://mlflow.internal:5000")
    at = open_page("setup")
    at.toggle(key=keys.SETUP_MLFLOW).set_value(True).run()
    at.text_input(key=keys.SETUP_MLFLOW_URI).input("http://attacker.example:5000").run()
    assert any(
        "not an allowed tracking server (http://mlflow.internal:5000)" in e.value for e in at.error
    )
    at.text_input(key=keys.SETUP_MLFLOW_URI).input("http://MLflow.internal:5000/").run()
    assert not [e.value for e in at.error if "tracking server" in e.value]
    assert not any("MLflow tracking server" in c.value for c in at.caption)


@pytest.mark.slow
def test_setup_logs_the_run_to_the_workspace_store(
    fresh_demo_home: Path, open_page: OpenPage
) -> None:
    from mlflow.tracking import MlflowClient

    at = open_page("setup", timeout=180)
    at.multiselect(key=keys.SETUP_MODES).set_value(["float16"]).run()
    at.toggle(key=keys.SETUP_MLFLOW).set_value(True).run()
    at.button(key=keys.SETUP_RUN).click().run(timeout=60)
    rid = at.session_state[keys.SELECTED_RUN]
    run_dir = fresh_demo_home / "runs" / rid
    uri = f"sqlite:///{fresh_demo_home.resolve() / 'mlflow.db'}"
    assert json.loads((run_dir / "job.json").read_text())["mlflow_uri"] == uri
    deadline = time.time() + 400
    while jobs.active_run_id() is not None and time.time() < deadline:
        time.sleep(2)
    assert jobs.read_status(run_dir)["status"] == "done"
    report = json.loads((run_dir / "report.json").read_text())
    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(report["tracking"]["run_id"])
    assert parent.data.tags["quantlens.run_id"] == rid
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    by_variant = {c.data.tags["quantlens.variant"]: c for c in children}
    # float16 is quantized, so the float32 pivot of the three-way split runs (and is logged) too.
    assert sorted(by_variant) == ["float16", "float32"]
    float16 = next(v for v in report["variants"] if v["name"] == "float16")
    assert by_variant["float16"].data.metrics["top1_agreement_pct"] == float16["top1_agreement_pct"]
