"""`--mlflow`: a run logged to a real MLflow (the workspace's SQLite store, and an `mlflow
server` started here), read back with MLflow's own client and checked against report.json."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from core.reporting.runmodel import RunReport, read_report
from core.reporting.tracking import log_finished_run, resolve_uri, short_reason

REPO = Path(__file__).resolve().parents[2]
# The tiny random model is near chance on its labels, so no variant passes: the run exits 1
# whatever --min-agreement says, with or without tracking.
NO_VERDICT_EXIT = 1


def run_cli(
    *args: str, home: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "QUANTLENS_HOME": str(home), **(env or {})}
    environment.pop("MLFLOW_TRACKING_URI", None)
    return subprocess.run(
        [sys.executable, "-m", "core", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cli_run(
    tiny_models: dict[str, Path], tiny_data: Path, out: Path, home: Path, *extra: str, **kw: Any
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "run", str(tiny_models["keras"]), "--data", str(tiny_data),
        "--modes", "float32,int8", "--preprocess", "unit", "--min-agreement", "0",
        "--latency-runs", "5", "--threads", "1", "--name", "tracked",
        "--out", str(out), *extra, home=home, **kw,
    )  # fmt: skip


def parent_and_children(uri: str, quantlens_run_id: str) -> tuple[Any, dict[str, Any]]:
    """The MLflow parent run tagged with the QuantLens run id, and its children by variant."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("QuantLens")
    assert experiment is not None
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`quantlens.run_id` = '{quantlens_run_id}'"
    )
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1, [r.data.tags for r in runs]
    parent = parents[0]
    children = {
        r.data.tags["quantlens.variant"]: r
        for r in runs
        if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    return parent, children


def check_logged_run(uri: str, out: Path, tmp_path: Path) -> None:
    """Params, metrics, nesting and artefacts as MLflow's client reads them back."""
    from mlflow.tracking import MlflowClient

    report = json.loads((out / "report.json").read_text())
    run_id = json.loads((out / "status.json").read_text())["run_id"]
    parent, children = parent_and_children(uri, run_id)
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == "tracked"
    assert parent.data.params["preprocessing_preset"] == "unit"
    assert parent.data.params["calibration_samples"] == "100"
    # 100 were asked for; the 24-image set cannot hold any out, so all 24 calibrated.
    calibration = report["calibration"]
    assert calibration["images"] == 24 and calibration["held_out"] == 0
    assert parent.data.params["calibration_images"] == "24"
    assert parent.data.params["calibration_source"] == calibration["source"]
    assert parent.data.params["model_sha256"] == report["reference"]["sha256"]
    assert parent.data.params["data_sha256"] == report["dataset"]["sha256"]
    assert parent.data.metrics["num_samples"] == report["dataset"]["num_samples"] == 24
    assert parent.data.metrics["reference_accuracy_pct"] == report["reference"]["accuracy_pct"]
    assert report["tracking"]["run_id"] == parent.info.run_id
    assert report["tracking"]["error"] is None

    assert sorted(children) == ["float32", "int8"]
    client = MlflowClient(tracking_uri=uri)
    for variant in report["variants"]:
        child = children[variant["name"]]
        assert child.info.status == "FINISHED"
        assert child.data.tags["quantlens.run_id"] == run_id
        params, metrics = child.data.params, child.data.metrics
        assert params["mode"] == variant["mode"]
        assert params["backend"] == "converter"
        assert params["io_type"] == ("int8" if variant["name"] == "int8" else "-")
        assert params["float_layers"] == "-"
        # Only int8 calibrates: float32 used no calibration images.
        assert params["calibration_samples"] == ("100" if variant["name"] == "int8" else "-")
        assert params["calibration_images"] == ("24" if variant["name"] == "int8" else "-")
        assert params["preprocessing_preset"] == "unit"
        lo, hi = variant["top1_agreement_ci95"]
        assert metrics["top1_agreement_pct"] == variant["top1_agreement_pct"]
        assert (metrics["top1_agreement_ci95_low"], metrics["top1_agreement_ci95_high"]) == (lo, hi)
        assert metrics["n"] == variant["n"] == 24
        assert metrics["topk_agreement_pct"] == variant["topk_agreement_pct"]
        assert metrics["reference_accuracy_pct"] == variant["reference_accuracy_pct"]
        assert metrics["tflite_accuracy_pct"] == variant["tflite_accuracy_pct"]
        assert (
            metrics["size_bytes"]
            == variant["size_bytes"]
            == (out / f"{variant['name']}.tflite").stat().st_size
        )
        # A signed change: a smaller model is negative.
        assert metrics["size_change_pct"] == pytest.approx(
            100.0 * (variant["size_bytes"] / report["reference"]["size_bytes"] - 1.0)
        )
        assert metrics["latency_p50_ms"] == variant["latency_ms"]["p50"]
        assert metrics["latency_p99_ms"] == variant["latency_ms"]["p99"]
        assert metrics["mean_kl"] == variant["mean_kl"]
        assert metrics["max_abs_prob_delta"] == variant["max_abs_prob_delta"]
        assert metrics["passed"] == 0.0  # NO VERDICT never passes
        got = client.download_artifacts(
            child.info.run_id, f"{variant['name']}.tflite", str(tmp_path)
        )
        assert sha256(Path(got)) == sha256(out / f"{variant['name']}.tflite")
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.json", "report.html"} <= names
    logged = client.download_artifacts(parent.info.run_id, "report.html", str(tmp_path))
    assert "int8" in Path(logged).read_text(encoding="utf-8")


@pytest.mark.slow
def test_the_workspace_store_holds_the_run_and_its_variants(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    home, out = tmp_path / "home", tmp_path / "out"
    done = cli_run(tiny_models, tiny_data, out, home, "--mlflow")
    assert done.returncode == NO_VERDICT_EXIT, done.stderr[-3000:]
    store = home / "mlflow.db"
    assert store.is_file()
    assert not (REPO / "mlruns").exists()  # artefacts sit in the workspace, not the repo
    uri = f"sqlite:///{store}"
    assert (
        f"mlflow: run {json.loads((out / 'report.json').read_text())['tracking']['run_id']}"
        in done.stdout
    )
    check_logged_run(uri, out, tmp_path)
    assert any((home / "mlartifacts").rglob("int8.tflite"))


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Any:
    """A real `mlflow server` on a free local port, stopped after the test."""
    port = free_port()
    log = (tmp_path / "mlflow-server.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1",
            "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination", str(tmp_path / "server-artifacts"),
        ],
        stdout=log, stderr=log, start_new_session=True,
        # No background job runners (GenAI jobs): this machine's cores are for the run.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, (tmp_path / "mlflow-server.log").read_text()[-2000:]
            assert time.time() < deadline, "mlflow server did not start"
            time.sleep(1)
        yield url
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)
        log.close()


@pytest.mark.slow
def test_a_tracking_server_receives_the_run(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path, mlflow_server: str
) -> None:
    out = tmp_path / "out"
    done = cli_run(tiny_models, tiny_data, out, tmp_path / "home", f"--mlflow={mlflow_server}")
    assert done.returncode == NO_VERDICT_EXIT, done.stderr[-3000:]
    assert not (tmp_path / "home" / "mlflow.db").exists()
    check_logged_run(mlflow_server, out, tmp_path)


@pytest.mark.slow
def test_a_server_that_is_down_leaves_the_run_complete_with_one_warning(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # bound then released: nothing listens
    out = tmp_path / "out"
    done = cli_run(tiny_models, tiny_data, out, tmp_path / "home", f"--mlflow={closed}")
    assert done.returncode == NO_VERDICT_EXIT, done.stderr[-3000:]  # the run's own, untouched
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["status"] == "done"
    assert [v["status"] for v in report["variants"]] == ["done", "done"]
    assert report["tracking"] == {"uri": closed, "error": "connection refused"}
    line = (
        f"MLflow logging to {closed} failed: connection refused; the run's results are "
        "complete in its folder (check that the tracking server is up)"
    )
    assert report["warnings"].count(line) == 1
    assert f"warning: {line}" in done.stdout.splitlines()
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_run_that_crashes_after_its_variants_is_logged_as_failed(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    """The supervisor logs what a crashed run finished; MLflow shows the run FAILED."""
    home, out = tmp_path / "home", tmp_path / "out"
    done = run_cli(
        "run", str(tiny_models["keras"]), "--data", str(tiny_data), "--modes", "float16",
        "--preprocess", "unit", "--min-agreement", "0", "--latency-runs", "3",
        "--out", str(out), "--mlflow", home=home,
        env={"QUANTLENS_FAULT": "segv@latency:float16"},
    )  # fmt: skip
    assert done.returncode == 3, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["status"] == "crashed"
    run_id = json.loads((out / "status.json").read_text())["run_id"]
    parent, children = parent_and_children(f"sqlite:///{home / 'mlflow.db'}", run_id)
    assert parent.info.status == "FAILED"
    assert parent.data.tags["quantlens.status"] == "crashed"
    float16 = report["variants"][0]
    assert children["float16"].data.metrics["top1_agreement_pct"] == float16["top1_agreement_pct"]
    assert report["tracking"]["run_id"] == parent.info.run_id


def test_mlflow_alone_means_the_workspace_store(tmp_path: Path) -> None:
    assert resolve_uri(None, tmp_path) is None
    assert resolve_uri("", tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert resolve_uri("http://host:5000") == "http://host:5000"
    assert resolve_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"


def test_local_stores_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker runs in the repository folder: a relative store must not move there."""
    monkeypatch.chdir(tmp_path)
    here = tmp_path.resolve()
    assert resolve_uri("sqlite:///runs.db") == f"sqlite:///{here}/runs.db"
    assert resolve_uri("tracking.db") == f"sqlite:///{here}/tracking.db"
    assert resolve_uri("mlruns") == f"file://{here}/mlruns"


def test_an_mlflow_error_becomes_one_short_line() -> None:
    refused = ConnectionError(
        "API request to endpoint /api/2.0/mlflow/experiments/get-by-name failed with exception "
        "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: /api "
        "(Caused by NewConnectionError('<urllib3...>: Failed to establish a new connection: "
        "[Errno 111] Connection refused'))"
    )
    assert short_reason(refused) == "connection refused"
    other = PermissionError("RESOURCE_DOES_NOT_EXIST:\n  " + "x" * 400)
    reason = short_reason(other)
    assert "\n" not in reason and len(reason) == 203 and reason.endswith("...")


@pytest.mark.slow
def test_a_store_that_cannot_be_written_is_one_warning_on_the_report(tmp_path: Path) -> None:
    """A hand-built finished run logged to a store under a read-only place: the report keeps
    its results and gains one warning saying what to check."""
    from tests.app.fixtures import build_run

    build_run(tmp_path)
    run_dir = tmp_path / "runs" / "run-fixture"
    before = json.loads((run_dir / "report.json").read_text())
    uri = "sqlite:////proc/quantlens-no-such-dir/mlflow.db"
    entry = log_finished_run(run_dir, uri)
    after = json.loads((run_dir / "report.json").read_text())
    assert entry["uri"] == uri and entry["error"]
    assert "\n" not in entry["error"]
    assert after["tracking"] == entry.to_dict() == {"uri": uri, "error": entry.error}
    assert after["warnings"] == [
        *before.get("warnings", []),
        f"MLflow logging to {uri} failed: {entry['error']}; the run's results are complete in "
        "its folder (check that the store is writable)",
    ]
    # The same variants (the fixture's dense flip rows now sparse, as this version writes).
    assert read_report(run_dir).variants == RunReport.from_dict(before).variants


def test_the_dashboards_tracking_servers_are_the_operators_allow_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from core.reporting.tracking import dashboard_uri_refusal

    monkeypatch.delenv("QUANTLENS_MLFLOW_ALLOWED", raising=False)
    assert dashboard_uri_refusal("") is None  # the workspace store
    assert "QUANTLENS_MLFLOW_ALLOWED" in (dashboard_uri_refusal("https://x.example") or "")
    assert "http:// or https://" in (dashboard_uri_refusal("/etc/x.db") or "")
    monkeypatch.setenv("QUANTLENS_MLFLOW_ALLOWED", "https://ml.example/team, http://10.0.0.5:5000")
    assert dashboard_uri_refusal("https://ml.example/team") is None
    assert dashboard_uri_refusal("https://ml.example/team/sub") is None
    assert dashboard_uri_refusal("http://10.0.0.5:5000") is None
    for refused in (
        "https://ml.example/teamx",  # not under the entry's path
        "https://ml.example",
        "http://ml.example/team",  # another scheme
        "http://10.0.0.5:5001",  # another port
        "http://10.0.0.5:5000@evil.example",  # user info: the host is evil.example
    ):
        assert dashboard_uri_refusal(refused), refused


@pytest.mark.slow
def test_the_experiment_is_model_development_and_a_run_lasts_as_long_as_its_job(
    tmp_path: Path,
) -> None:
    """MLflow 3 opens an untagged experiment on its GenAI overview; and the MLflow run's start
    and end are the job's (status.json), not the moments logging took."""
    from mlflow.tracking import MlflowClient

    from core.inputs import rundir
    from tests.app.fixtures import build_run

    build_run(tmp_path)
    run_dir = tmp_path / "runs" / "run-fixture"
    status = rundir.read_json(run_dir / "status.json")
    status.update(started=1_700_000_000.25, finished=1_700_000_754.5)  # a 754 s job, long ago
    rundir.write_json_atomic(run_dir / "status.json", status)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    entry = log_finished_run(run_dir, uri)
    assert entry["error"] is None, entry
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment(entry["experiment_id"])
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    parent = client.get_run(entry["run_id"])
    assert (parent.info.start_time, parent.info.end_time) == (1_700_000_000_250, 1_700_000_754_500)
    children = client.search_runs(
        [entry["experiment_id"]], filter_string=f"tags.`mlflow.parentRunId` = '{entry['run_id']}'"
    )
    assert children and all(c.info.start_time == 1_700_000_000_250 for c in children)


def test_a_local_store_without_the_full_mlflow_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The runtime requirements hold only MLflow's client: a local store needs the extra, and
    the CLI says so before any work (exit 2); a tracking server needs only the client."""
    from core import cli
    from core.reporting.tracking import missing_package

    monkeypatch.setitem(sys.modules, "sqlalchemy", None)  # what mlflow-skinny alone looks like
    assert missing_package("http://127.0.0.1:5000") is None
    message = missing_package(f"sqlite:///{tmp_path}/mlflow.db")
    assert message is not None and "requirements-extras.txt" in message
    model, data = tmp_path / "m.keras", tmp_path / "d.csv"
    model.write_bytes(b"x")
    data.write_text("filepath,label\n")
    code = cli.main(
        ["run", str(model), "--data", str(data), "--mlflow", "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1
    assert err[0].startswith("error: logging to a local MLflow store (sqlite:///")
    assert "requirements-extras.txt" in err[0]
    assert not (tmp_path / "o").exists()  # refused before any work
