"""Experiment tracking: a finished run logged to MLflow, one nested MLflow run per variant.

    python -m core.reporting.tracking RUN_DIR [--status STATUS]   log a run folder (used by the supervisor)

The worker logs a run once it is finished; the supervisor logs a run that ended abnormally
(crashed, timed out, failed or cancelled) through this module's command, in its own process.
MLflow is imported inside the functions only: `import core` and the web server never load it.

A tracking server that is down or refuses the write never fails the run: the error becomes one
line in report.json's `warnings` and its `tracking` entry, which the CLI and Overview show.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from core.inputs import rundir
from core.reporting.report_changes import add_warnings, set_run
from core.reporting.runmodel import RunReport, read_report, update_report
from core.reporting.sections.base import put_section
from core.reporting.sections.calibration_record import CalibrationRecord
from core.reporting.sections.tracking_record import Tracking
from core.reporting.sections.variant import Variant
from core.types import RunStatus

EXPERIMENT = "QuantLens"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"  # MLflow's own variable names another experiment
STORE_FILE = (
    "mlflow.db"  # MLflow 3's recommended local store is SQLite (the file store is deprecated)
)
ARTIFACTS_DIR = "mlartifacts"
# A server that is down must cost seconds, not MLflow's default of 7 retries x 120 s.
_HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
_MAX_PARAM = 500  # MLflow allows 6000 characters; long layer lists are cut with "..."
# MLflow run statuses of a run's or a variant's end (the two share these words); any other: FAILED.
_RUN_STATUS = {str(RunStatus.DONE): "FINISHED", str(RunStatus.CANCELLED): "KILLED"}
# MLflow 3 opens an experiment on its GenAI overview unless its kind says otherwise; this tag
# (the one MLflow's UI reads) makes it open on the runs table, as for model training.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
_LATENCY_KEYS = ("min", "p50", "p90", "p99", "mean", "std")


# The tracking servers a dashboard user may send runs (and their models) to: comma-separated
# http(s) URIs set by the operator, as QUANTLENS_RAY_ADDRESS is. The CLI, run by an operator,
# is not restricted.
ALLOWED_SERVERS_ENV = "QUANTLENS_MLFLOW_ALLOWED"


def _origin_and_path(uri: str) -> tuple[str, str, str]:
    from urllib.parse import urlsplit

    parts = urlsplit(uri.strip())
    return parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/")


def allowed_servers() -> list[str]:
    """The operator's allow-list of tracking servers (empty: none but the workspace store)."""
    raw = os.environ.get(ALLOWED_SERVERS_ENV, "")
    return [entry.strip() for entry in raw.split(",") if entry.strip()]


def dashboard_uri_refusal(uri: str) -> str | None:
    """Why the dashboard may not log to `uri` (one line), or None when it may.

    Blank (the workspace store) is always allowed; anything else must be an http(s) server on
    the operator's allow-list: the same scheme, host and port, and a path under the entry's.
    """
    text = uri.strip()
    if not text:
        return None
    if not text.lower().startswith(("http://", "https://")):
        return "Give an http:// or https:// tracking server, or leave it blank."
    scheme, netloc, path = _origin_and_path(text)
    for entry in allowed_servers():
        e_scheme, e_netloc, e_path = _origin_and_path(entry)
        if (scheme, netloc) == (e_scheme, e_netloc) and (
            path == e_path or path.startswith(e_path + "/")
        ):
            return None
    servers = ", ".join(allowed_servers())
    if servers:
        return f"{text} is not an allowed tracking server ({servers}); pick one or leave it blank."
    return (
        f"{text} is not an allowed tracking server: the operator allows servers with "
        f"{ALLOWED_SERVERS_ENV}; leave it blank for the workspace store."
    )


def default_uri(home: Path | None = None) -> str:
    """The workspace's own store: `sqlite:///<workspace>/mlflow.db`."""
    return f"sqlite:///{(home or rundir.workspace_home()).resolve() / STORE_FILE}"


def resolve_uri(value: str | None, home: Path | None = None) -> str | None:
    """The tracking URI a run logs to; None: no tracking.

    An empty value (`--mlflow` alone) is the workspace store. Local stores are made absolute
    here, since the worker runs in another working folder: a plain path ending in `.db` is a
    SQLite store, any other plain path MLflow's file store, and `sqlite:///x.db` is relative to
    the folder the command ran in, as MLflow reads it.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return default_uri(home)
    if "://" not in text:
        path = Path(text).expanduser().resolve()
        return f"sqlite:///{path}" if path.suffix == ".db" else path.as_uri()
    if text.startswith("sqlite:///") and not text.startswith("sqlite:////"):
        return f"sqlite:///{Path(text.removeprefix('sqlite:///')).resolve()}"
    return text


def missing_package(uri: str) -> str | None:
    """Why this installation cannot log to `uri`, in one line; None when it can.

    The runtime requirements hold only MLflow's client (`mlflow-skinny`), which logs to a
    tracking server; a local store (SQLite or files) needs the full package, an optional extra.
    """
    extra = "pip install -r requirements-extras.txt"
    if importlib.util.find_spec("mlflow") is None:
        return f"--mlflow needs MLflow, which is not installed: {extra} (or `pip install mlflow`)"
    local = not uri.startswith(("http://", "https://", "databricks"))
    if local and importlib.util.find_spec("sqlalchemy") is None:
        return (
            f"logging to a local MLflow store ({uri}) needs the full MLflow package: {extra}, "
            "or log to a tracking server with --mlflow=http://HOST:PORT"
        )
    return None


def log_finished_run(run_dir: Path, uri: str, *, status: str | None = None) -> Tracking:
    """Log the run in `run_dir` to MLflow and record the outcome in its report.json.

    Never raises for a tracking failure: the run's results stay what they are, and the
    failure becomes one line in `warnings`.

    Args:
        run_dir: a run folder holding report.json.
        uri: the MLflow tracking URI.
        status: the run's final status when the report does not say it yet (the supervisor's).

    Returns:
        The `tracking` entry written to report.json: uri, experiment and run ids, or error.
    """
    report = read_report(run_dir)
    if status is not None:
        report = replace(report, run=replace(report.run, status=status))
    warning = None
    try:
        missing = missing_package(uri)
        if missing:
            raise ModuleNotFoundError(missing)
        entry = _log(run_dir, report, uri)
    except Exception as exc:  # any failure of the tracking side; the run itself is complete
        entry = Tracking(uri=uri, error=short_reason(exc))
        local = uri.startswith(("sqlite:", "file:"))
        fix = "the store is writable" if local else "the tracking server is up"
        warning = (
            f"MLflow logging to {uri} failed: {entry.error}; the run's results are complete "
            f"in its folder (check that {fix})"
        )

    # Logging takes seconds: the outcome joins the report as it is now, not as it was read.
    def note(current: dict[str, Any]) -> None:
        if status is not None:
            set_run(current, status=status)
        if warning is not None:
            add_warnings(current, [warning])
        put_section(current, entry)

    update_report(run_dir, note)
    return entry


def short_reason(exc: BaseException) -> str:
    """One short line for an MLflow error; its messages hold whole retry histories."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    for known in ("Connection refused", "Name or service not known", "timed out"):
        if known.lower() in text.lower():
            return known.lower()
    return text[:200] + ("..." if len(text) > 200 else "")


def _log(run_dir: Path, report: RunReport, uri: str) -> Tracking:
    for name, value in _HTTP_LIMITS.items():
        os.environ.setdefault(name, value)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment_id = _experiment_id(client, uri)
    run_id = quantlens_run_id(run_dir, report)
    earlier = _logged_parent(client, report, uri, run_id)
    if earlier is not None:  # logged before: a re-score added a variant
        return _log_added_variants(client, experiment_id, earlier, run_dir, report, uri)
    start_ms, end_ms = job_times_ms(run_dir)
    parent = client.create_run(
        experiment_id,
        start_time=start_ms,
        run_name=_run_name(run_dir, report),
        tags={"quantlens.run_id": run_id, "quantlens.status": str(report.run.status)},
    ).info.run_id
    try:
        _log_values(client, parent, run_params(report), run_metrics(report))
        _log_history(client, parent, sweep_metrics(report))
        for variant in report.variants:
            _log_variant(client, experiment_id, parent, run_dir, report, variant)
        _log_reports(client, parent, run_dir)
    except BaseException:
        with contextlib.suppress(Exception):  # the store may be what failed
            client.set_terminated(parent, "FAILED", end_time=end_ms)
        raise
    client.set_terminated(
        parent, _RUN_STATUS.get(str(report.run.status), "FAILED"), end_time=end_ms
    )
    return Tracking(uri=uri, experiment_id=experiment_id, run_id=parent)


def _logged_parent(client: Any, report: RunReport, uri: str, run_id: str) -> str | None:
    """The MLflow run this QuantLens run was logged to before, in this store, if it is there."""
    earlier = report.tracking
    if earlier is None or earlier.uri != uri or not earlier.run_id or earlier.error:
        return None
    try:
        found = client.get_run(earlier.run_id)
    except Exception:  # deleted, or another store under the same URI: log it anew
        return None
    if found.data.tags.get("quantlens.run_id") != run_id:
        return None
    return earlier.run_id


def _log_added_variants(
    client: Any, experiment_id: str, parent: str, run_dir: Path, report: RunReport, uri: str
) -> Tracking:
    """Log the variants the parent has no nested run for yet, and the reports again: a
    re-score adds a variant to a finished run, which must not become a second MLflow run.
    The parent's parameters stay as first logged (MLflow never changes a parameter)."""
    logged = {
        r.data.tags.get("quantlens.variant")
        for r in client.search_runs(
            [experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'"
        )
    }
    for variant in report.variants:
        if variant.name not in logged:
            _log_variant(client, experiment_id, parent, run_dir, report, variant)
    _log_reports(client, parent, run_dir)
    client.set_tag(parent, "quantlens.status", str(report.run.status))
    client.set_tag(parent, "quantlens.variants", ",".join(report.variant_names))
    return Tracking(uri=uri, experiment_id=experiment_id, run_id=parent)


def _run_name(run_dir: Path, report: RunReport) -> str:
    """The name History shows: `create_run` names every run (by default `model · HH:MM`)."""
    return report.run.name or run_dir.name


def quantlens_run_id(run_dir: Path, report: RunReport) -> str:
    """The store's id of the run: status.json knows it for a CLI run kept in an --out folder."""
    status = run_dir / rundir.STATUS
    known = rundir.read_json(status).get("run_id") if status.exists() else None
    return str(known or report.run.id or run_dir.name)


def job_times_ms(run_dir: Path) -> tuple[int | None, int | None]:
    """When the job started and ended (status.json, epoch ms), so an MLflow run's duration is
    the job's, not the time logging took; None where unknown (MLflow then uses now). A run
    logged by its own worker is not marked finished yet: it ends now, as the job does."""
    status = run_dir / rundir.STATUS
    data = rundir.read_json(status) if status.exists() else {}

    def ms(key: str) -> int | None:
        value = data.get(key)
        return int(float(value) * 1000) if isinstance(value, int | float) and value > 0 else None

    return ms("started"), ms("finished")


def _experiment_id(client: Any, uri: str) -> str:
    """The experiment's id, creating it (with its artefacts next to a local SQLite store) and
    marking it as model development, not GenAI."""
    name = os.environ.get(EXPERIMENT_ENV) or EXPERIMENT
    found = client.get_experiment_by_name(name)
    if found is not None:
        if EXPERIMENT_KIND_TAG not in found.tags:  # made by an earlier QuantLens
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return str(found.experiment_id)
    location = None
    if uri.startswith("sqlite:///"):
        # Without a location MLflow puts artefacts in ./mlruns of the worker's working folder.
        location = (Path(uri.removeprefix("sqlite:///")).parent / ARTIFACTS_DIR).as_uri()
    return str(
        client.create_experiment(
            name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
        )
    )


def _log_variant(
    client: Any,
    experiment_id: str,
    parent: str,
    run_dir: Path,
    report: RunReport,
    variant: Variant,
) -> None:
    run_id = quantlens_run_id(run_dir, report)
    start_ms, end_ms = job_times_ms(run_dir)
    child = client.create_run(
        experiment_id,
        start_time=start_ms,
        run_name=variant.name,
        tags={
            "mlflow.parentRunId": parent,
            "quantlens.run_id": run_id,
            "quantlens.variant": variant.name,
            "quantlens.status": variant.status,
        },
    ).info.run_id
    try:
        _log_values(client, child, variant_params(report, variant), variant_metrics(variant))
        tflite = rundir.tflite_path(run_dir, variant)
        if tflite.is_file():
            client.log_artifact(child, str(tflite))
    except BaseException:
        with contextlib.suppress(Exception):
            client.set_terminated(child, "FAILED", end_time=end_ms)
        raise
    client.set_terminated(child, _RUN_STATUS.get(variant.status, "FAILED"), end_time=end_ms)


def _log_reports(client: Any, parent: str, run_dir: Path) -> None:
    """report.json, and report.html rendered for the run (MLflow's artefact view shows it)."""
    from core.reporting.html import render_report_html

    client.log_artifact(parent, str(run_dir / rundir.REPORT))
    with tempfile.TemporaryDirectory(prefix="quantlens-mlflow-") as scratch:
        html = Path(scratch) / rundir.REPORT_HTML
        html.write_text(render_report_html(run_dir), encoding="utf-8")
        client.log_artifact(parent, str(html))


def _log_values(
    client: Any, run_id: str, params: dict[str, str], metrics: dict[str, float]
) -> None:
    from mlflow.entities import Metric, Param

    client.log_batch(
        run_id,
        metrics=[Metric(k, v, 0, 0) for k, v in metrics.items()],
        params=[Param(k, v) for k, v in params.items()],
    )


def _log_history(client: Any, run_id: str, points: list[tuple[str, float, int]]) -> None:
    """Metrics with a step each (key, value, step), for MLflow's metric-against-step charts."""
    from mlflow.entities import Metric

    if points:
        client.log_batch(run_id, metrics=[Metric(k, v, 0, step) for k, v, step in points])


def _param(value: Any) -> str:
    if isinstance(value, list | tuple):
        value = ",".join(str(v) for v in value) or "-"
    text = "-" if value is None else str(value)
    return text if len(text) <= _MAX_PARAM else text[: _MAX_PARAM - 3] + "..."


def _numbers(pairs: Iterable[tuple[str, Any]]) -> dict[str, float]:
    """Metrics that have a finite value: MLflow has no null, and a missing number is not 0."""
    out: dict[str, float] = {}
    for key, value in pairs:
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, int | float) and math.isfinite(value):
            out[key] = float(value)
    return out


def run_params(report: RunReport) -> dict[str, str]:
    """The whole run's inputs: model, data, preprocessing and options."""
    ref, data, options = report["reference"], report["dataset"], report["options"]
    return {
        k: _param(v)
        for k, v in {
            "model_path": ref.get("path"),
            "model_format": ref.get("format"),
            "model_sha256": ref.get("sha256"),
            "data_path": data.get("file") or data.get("path"),
            "data_sha256": data.get("sha256"),
            "preprocessing_preset": report["preprocessing"].get("preset"),
            "calibration_samples": options.get("calibration_samples"),
            **calibration_params(report),
            "calibration_sweep": options.get("calibration_sweep") or None,
            "sweep_seeds": options.get("sweep_seeds"),
            "max_samples": options.get("max_samples"),
            "min_agreement_pct": options.get("min_agreement_pct"),
            "threads": report.get("environment", {}).get("threads"),
            "seed": options.get("seed"),
            "latency_runs": options.get("latency_runs"),
            "variants": report.variant_names,
            "tensorflow": report.get("environment", {}).get("tensorflow"),
            "litert": report.get("environment", {}).get("litert"),
        }.items()
    }


def calibration_params(report: RunReport) -> dict[str, Any]:
    """Where the calibration images came from and how many were used (report.json's
    `calibration`): a requested count of 100 on a 24-image set calibrates with 24."""
    calibration = report.calibration or CalibrationRecord()
    return {
        "calibration_source": calibration.source,
        "calibration_images": calibration.images,
        "calibration_held_out": calibration.held_out,
        "calibration_data": calibration.path,
    }


def sweep_metrics(report: RunReport) -> list[tuple[str, float, int]]:
    """The calibration sweep as metric histories, one step per calibration size: each mode's
    agreement and mean KL, mean over seeds (MLflow draws them against the step)."""
    modes = {} if report.sweep is None else report.sweep.modes
    found = []
    for mode, entry in modes.items():
        for row in entry.summary or ():
            for key, value in (
                (f"sweep_{mode}_agreement_pct", row["agreement_mean"]),
                (f"sweep_{mode}_mean_kl", row["mean_kl_mean"]),
            ):
                if isinstance(value, int | float) and math.isfinite(value):
                    found.append((key, float(value), int(row["size"])))
    return found


def run_metrics(report: RunReport) -> dict[str, float]:
    """The original model's numbers and the run's counts."""
    ref, data = report["reference"], report["dataset"]
    latency = ref.get("latency_ms") or {}
    return _numbers(
        [
            ("reference_accuracy_pct", ref.get("accuracy_pct")),
            ("reference_size_bytes", ref.get("size_bytes")),
            ("num_samples", data.get("num_samples")),
            ("num_skipped", data.get("num_skipped")),
            ("variants_passed", sum(v.result.passed is True for v in report.variants)),
            *((f"reference_latency_{k}_ms", latency.get(k)) for k in _LATENCY_KEYS),
        ]
    )


def variant_params(report: RunReport, variant: Variant) -> dict[str, str]:
    """A variant's identity (DESIGN §9) and the run inputs it shares, so each child stands alone."""
    from core.types import NEEDS_CALIBRATION

    shared = run_params(report)
    ident = variant.identity
    calibrated = ident.mode in NEEDS_CALIBRATION
    calibration_samples = report.calibration_of(variant)[0]
    # The run's calibration set, unless the variant asked for its own count.
    own_set = variant.identity.calibration_samples is not None
    calibration = {
        k: "-" if not calibrated or (own_set and k != "calibration_source") else _param(v)
        for k, v in calibration_params(report).items()
    }
    return {
        # Only the modes that calibrate used the images: "-" says so where a count would mislead.
        "calibration_samples": _param(calibration_samples) if calibrated else "-",
        **calibration,
        "variant": _param(variant.name),
        "mode": _param(str(ident.mode)),
        "backend": _param(str(ident.backend)),
        "io_type": _param(None if ident.io_type is None else str(ident.io_type)),
        "select_tf_ops": _param(ident.allow_select_tf_ops),
        "float_layers": _param(list(ident.float_layers)),
        "int16_layers": _param(list(ident.int16_layers)),
        "conversion_route": _param(variant.result.conversion_route),
        **{
            k: shared[k]
            for k in (
                "preprocessing_preset",
                "model_sha256",
                "data_sha256",
                "seed",
                "threads",
            )
        },
    }


def variant_metrics(variant: Variant) -> dict[str, float]:
    """Agreement with its 95 % bounds and n, accuracy of both models, size, latency, KL, Δp."""
    from core.reporting.report import size_change_pct

    r = variant.result
    ci = r.top1_agreement_ci95 or (None, None)
    latency = r.latency_ms or {}
    return _numbers(
        [
            ("top1_agreement_pct", r.top1_agreement_pct),
            ("top1_agreement_ci95_low", ci[0]),
            ("top1_agreement_ci95_high", ci[1]),
            ("n", r.n),
            ("topk_agreement_pct", r.topk_agreement_pct),
            ("k", r.k),
            ("disagreements", r.disagreements),
            ("reference_accuracy_pct", r.reference_accuracy_pct),
            ("tflite_accuracy_pct", r.tflite_accuracy_pct),
            ("accuracy_delta_pct", r.accuracy_delta_pct),
            ("size_bytes", r.size_bytes),
            ("size_change_pct", size_change_pct(r.size_reduction_pct)),
            (
                "size_change_vs_float32_pct",
                size_change_pct(r.size_reduction_vs_float32_pct),
            ),
            ("mean_kl", r.mean_kl),
            ("max_abs_prob_delta", r.max_abs_prob_delta),
            ("mean_abs_top1_prob_delta", r.mean_abs_top1_prob_delta),
            ("nan_outputs", r.nan_outputs),
            ("speedup_vs_reference", r.speedup_vs_reference),
            ("speedup_vs_float32", (r.speedup or {}).get("value")),
            ("passed", r.passed),
            *((f"latency_{k}_ms", latency.get(k)) for k in _LATENCY_KEYS),
        ]
    )


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m core.reporting.tracking")
    parser.add_argument("run_dir")
    parser.add_argument("--status", default=None, help="the run's final status")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    job = rundir.read_json(run_dir / rundir.JOB)
    uri = job.get("mlflow_uri")
    if not uri or not (run_dir / rundir.REPORT).exists():
        return 0
    entry = log_finished_run(run_dir, uri, status=args.status)
    return 0 if entry.error is None else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
