"""Per-layer diagnosis on request: a quantized variant that flipped no image is not diagnosed
during its run (the diagnosis would explain no flip, and cost every run seconds); `export` and
the Layers page ask for it, which re-opens the run as a re-score does. Which variants flipped
is recomputed here: the original in TensorFlow, each `.tflite` in LiteRT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from core.errors import QuantLensError
from core.inputs import rundir
from core.jobs.rescore import request_diagnosis, status_after
from core.reporting.report import (
    DIAGNOSIS_ON_REQUEST,
    ON_REQUEST_ASKED,
    ON_REQUEST_WAITING,
    awaiting_diagnosis,
)
from core.reporting.report_changes import defer_diagnosis, record_diagnosis
from core.types import RunStatus
from tests.core.test_autofix import build_outlier_model
from tests.core.test_cli import run_cli
from tests.core.test_cli_quantizer import _inputs, _reference_probs, _tflite_probs
from tests.core.test_selective import _write_images


def _report(run_dir: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((run_dir / rundir.REPORT).read_text())


def test_the_waiting_mark_lasts_until_the_diagnosis_is_recorded() -> None:
    report = {
        "variants": [
            {"name": "int8", "status": "done"},
            {"name": "float16_q", "status": "done"},
            {"name": "dynamic_q", "status": "failed"},
        ]
    }
    defer_diagnosis(report, "float16_q")
    defer_diagnosis(report, "dynamic_q")
    assert awaiting_diagnosis(report) == ["float16_q"]  # a failed variant has nothing to diagnose
    report["variants"][1][DIAGNOSIS_ON_REQUEST] = ON_REQUEST_ASKED
    defer_diagnosis(report, "float16_q")  # a worker that finds it asked for leaves it asked
    assert report["variants"][1][DIAGNOSIS_ON_REQUEST] == ON_REQUEST_ASKED
    record_diagnosis(report, "float16_q", {"suspects": [{"layer": "wide"}]})
    assert DIAGNOSIS_ON_REQUEST not in report["variants"][1]
    assert report["diagnosis"] == {"float16_q": ["wide"]}
    assert awaiting_diagnosis(report) == []


@pytest.mark.slow
def test_a_variant_that_flipped_nothing_is_diagnosed_when_export_asks(tmp_path: Path) -> None:
    model = build_outlier_model(tmp_path / "outlier")
    data = _write_images(tmp_path / "data")
    out = tmp_path / "out"
    done = run_cli(
        "run",
        str(model),
        "--data",
        str(data),
        "--modes",
        "int8,float16_q",
        "--preprocess",
        "unit",
        "--latency-runs",
        "3",
        "--out",
        str(out),
        home=tmp_path,
    )
    report = _report(out)
    assert report["run"]["status"] == "done", done.stdout + done.stderr
    by_name = {v["name"]: v for v in report["variants"]}

    # Independently: which variant flips an image.
    images = _inputs(data)
    original = _reference_probs(model, images).argmax(axis=1)

    def flips(name: str) -> int:
        tflite = out / f"{by_name[name]['file_id']}.tflite"
        return int(np.sum(_tflite_probs(tflite, images).argmax(axis=1) != original))

    assert flips("int8") > 0 and flips("float16_q") == 0  # the fixture is what the test is about
    int8, float16_q = by_name["int8"], by_name["float16_q"]
    assert int8["diagnosis"]["flipped_images"] == flips("int8")
    assert (out / f"{int8['file_id']}.layers.csv").is_file()
    # The variant that flipped nothing waits: no table, no details, marked for the Layers page.
    assert float16_q.get("diagnosis") is None
    assert float16_q[DIAGNOSIS_ON_REQUEST] == ON_REQUEST_WAITING
    assert not (out / f"{float16_q['file_id']}.layers.csv").exists()
    assert awaiting_diagnosis(report) == ["float16_q"]

    exported = run_cli("export", str(out), home=tmp_path)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert "diagnosing float16_q first" in exported.stderr
    after = _report(out)
    again = {v["name"]: v for v in after["variants"]}
    diagnosis = again["float16_q"]["diagnosis"]
    assert diagnosis["flipped_images"] == 0 and diagnosis["table"] == (
        f"{float16_q['file_id']}.layers.csv"
    )
    assert (out / diagnosis["table"]).is_file()
    assert DIAGNOSIS_ON_REQUEST not in again["float16_q"]
    assert after["run"]["status"] == "done" and awaiting_diagnosis(after) == []
    # Every result stands as it was; only the diagnosis joined.
    assert again["int8"] == int8
    assert {k: v for k, v in again["float16_q"].items() if k != "diagnosis"} == {
        k: v for k, v in float16_q.items() if k != DIAGNOSIS_ON_REQUEST
    }
    # Both diagnosed variants' node data were written.
    assert exported.stdout.count("model explorer node data: ") == 2, exported.stdout
    # Asking again finds nothing waiting, and re-opens nothing.
    assert request_diagnosis(out, home=tmp_path) == []
    assert rundir.read_json(out / rundir.STATUS)["status"] == "done"


def test_a_diagnosis_request_on_an_unfinished_run_is_refused_and_a_failed_one_restores(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    from core.reporting.report import ROLE_SELECTED, pending_variant
    from core.types import VariantSpec

    entry = pending_variant(VariantSpec.parse("int8"), role=ROLE_SELECTED)
    report = {"run": {"status": "running"}, "variants": [entry]}
    (out / rundir.REPORT).write_text(json.dumps(report))
    rundir.write_json_atomic(out / rundir.STATUS, {"status": "running", "run_id": "r1"})
    with pytest.raises(QuantLensError, match="still running; ask for its diagnosis once"):
        request_diagnosis(out, home=tmp_path)
    # A re-open for diagnosis that fails gives the run its previous status, and says why.
    rundir.write_json_atomic(
        out / rundir.STATUS,
        {
            "status": "running",
            "rescore": {
                "variant": "float16_q",
                "doing": "diagnosing float16_q",
                "previous_status": "done",
            },
        },
    )
    assert status_after(out, RunStatus.FAILED, "out of memory") == (
        RunStatus.DONE,
        "diagnosing float16_q failed: out of memory",
    )
