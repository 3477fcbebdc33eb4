"""Re-scoring a finished run with chosen layers in float (issue 12 item 5, the Layers page's
button and `python -m core rescore`): the derived variant joins the same run, evaluated on the
same images, and its agreement is recomputed here from its own `.tflite` with ai_edge_litert
and the original with TensorFlow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from core.errors import QuantLensError
from core.history.store import open_store
from core.inputs import rundir
from core.jobs.outcome import finish_run
from core.jobs.rescore import add_rescore_variant
from core.reporting.fix_ladder import Rung, rung_of
from core.reporting.runmodel import RunReport
from core.types import RunStatus, VariantStatus
from tests.core.test_autofix import build_outlier_model
from tests.core.test_cli import run_cli
from tests.core.test_cli_quantizer import _inputs, _reference_probs, _tflite_probs
from tests.core.test_selective import _of, _ops, _write_images


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    """(home, model, data csv, run folder) of a finished int8 run of the outlier model."""
    root = tmp_path_factory.mktemp("rescore")
    model = build_outlier_model(root / "outlier")
    data = _write_images(root / "data")
    out = root / "out"
    done = run_cli(
        "run",
        str(model),
        "--data",
        str(data),
        "--modes",
        "int8",
        "--preprocess",
        "unit",
        "--min-agreement",
        "99",
        "--latency-runs",
        "3",
        "--out",
        str(out),
        home=root,
    )
    assert done.returncode == 1, done.stderr  # int8 is below the bar: something to fix
    return root, model, data, out


def _report(run_dir: Path) -> dict:  # type: ignore[type-arg]
    return json.loads((run_dir / rundir.REPORT).read_text())


@pytest.mark.slow
def test_rescore_adds_a_float_layer_variant_to_the_same_run(
    finished_run: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    home, model, data, original = finished_run
    out = tmp_path / "out"
    shutil.copytree(original, out)
    _register_copy(home, original, out)
    before = {v["name"]: v for v in _report(out)["variants"]}
    done = run_cli("rescore", str(out), "--variant", "int8", "--keep-float", "wide,mix", home=home)
    assert done.returncode == 1, done.stderr  # the parent still fails the 99 % bar
    report = _report(out)
    by_name = {v["name"]: v for v in report["variants"]}
    derived = by_name["int8:keep=mix+wide"]
    assert derived["parent"] == "int8" and derived["float_layers"] == ["mix", "wide"]
    assert derived["derived_by"] == "re-score" and derived["status"] == "done"
    assert (
        derived["command"] == f"python -m core rescore {out} --variant int8 --keep-float mix,wide"
    )
    assert derived["latency_ms"]["n"] == 3 and derived["n"] == 24
    # Its speed-up comes from the re-score's own process: float32 TFLite was timed again there,
    # interleaved with it, not taken from the original run's samples.
    speedup = derived["speedup"]
    mine = np.load(out / f"{derived['file_id']}.latency.npy")
    cuts = np.cumsum(derived["latency_ms"]["blocks"])[:-1]
    own = [float(np.median(block)) for block in np.split(mine, cuts)]
    assert speedup["baseline"] == "float32" and speedup["block_p50_ms"] == pytest.approx(own)
    ratios = [b / m for b, m in zip(speedup["baseline_block_p50_ms"], own, strict=True)]
    assert speedup["value"] == pytest.approx(float(np.median(ratios)))
    earlier = np.load(out / "float32.latency.npy")
    earlier_blocks = np.split(earlier, np.cumsum(before["float32"]["latency_ms"]["blocks"])[:-1])
    assert speedup["baseline_block_p50_ms"] != [float(np.median(b)) for b in earlier_blocks]
    assert derived["size_bytes"] == (out / f"{derived['file_id']}.tflite").stat().st_size
    # Diagnosed like any other variant, so the Layers page lists it.
    assert (out / f"{derived['file_id']}.layers.csv").is_file()
    # Layers in float: not integer-only, recorded from its .tflite and shown so by its rung.
    assert derived["deployability"]["integer_only"]["integer_only"] is False
    assert _rung(report, "keep_float", ("mix", "wide"), derived["name"]).integer_only is False
    # The finished variants are left exactly as they were.
    for name in ("int8", "float32"):
        assert by_name[name] == before[name]
    assert report["run"]["status"] == "done"
    # Independently: the original in TensorFlow, the .tflite in LiteRT, on the CSV's images.
    images = _inputs(data)
    ref = _reference_probs(model, images).argmax(axis=1)
    tfl = _tflite_probs(out / f"{derived['file_id']}.tflite", images).argmax(axis=1)
    assert derived["top1_agreement_pct"] == pytest.approx(100 * np.mean(ref == tfl))
    assert derived["top1_agreement_pct"] > by_name["int8"]["top1_agreement_pct"]
    # The named ops really are float: float outputs, float weights; the others stay int8.
    ops = _ops((out / f"{derived['file_id']}.tflite").read_bytes())
    assert [o for o, _ in _of(ops, "CONV_2D", "wide_1")] == ["FLOAT32"]
    assert [o for o, _ in _of(ops, "CONV_2D", "mix_1")] == ["FLOAT32"]
    assert [o for o, _ in _of(ops, "MEAN", "pool_1")] == ["INT8"]
    assert [out for op, out, _, _ in ops if op == "FULLY_CONNECTED"] == ["INT8"]  # the head
    with open_store(home) as store:
        row = store.get_run(report["run"]["id"])
    assert row is not None and row.status is RunStatus.DONE


def _rung(report: dict, kind: str, layers: tuple[str, ...], name: str) -> Rung:  # type: ignore[type-arg]
    """The fix page's rung for a variant derived from int8, read back from report.json."""
    run = RunReport.from_dict(report)
    by_name = {v.name: v for v in run.variants}
    return rung_of(by_name["int8"], kind, layers, by_name[name])


@pytest.mark.slow
def test_a_rescored_rung_records_whether_it_is_integer_only(
    finished_run: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    """A rung re-scored into a run (not measured by any auto-fix search) records whether its
    model computes in integers only, from its own .tflite; LiteRT's own tensor types say the
    same, and the fix page's rung shows it instead of the expectation."""
    from tests.core.test_deployability import _float_tensors_inside

    home, _, _, original = finished_run
    out = tmp_path / "out"
    shutil.copytree(original, out)
    _register_copy(home, original, out)
    done = run_cli(
        "rescore", str(out), "--variant", "int8", "--int16", "wide,wide_relu,mix", home=home
    )
    assert done.returncode in (0, 1), done.stderr
    report = _report(out)
    derived = next(v for v in report["variants"] if v["name"] == "int8_q:int16=mix+wide+wide_relu")
    assert derived["status"] == "done" and derived["derived_by"] == "re-score"
    # Its parent is the variant chosen, not the quantizer variant its name derives from, and its
    # command re-scores from that variant (the run has no int8_q).
    assert derived["parent"] == "int8"
    assert derived["command"].endswith("--variant int8 --int16 mix,wide,wide_relu")
    recorded = derived["deployability"]["integer_only"]["integer_only"]
    assert recorded is not _float_tensors_inside(out / f"{derived['file_id']}.tflite")
    assert recorded is True  # 16-bit activations keep the model integer
    rung = _rung(report, "int16_activations", ("mix", "wide", "wide_relu"), derived["name"])
    assert rung.tried and rung.integer_only is True
    # The weight-only rung re-scores too: int8 weights, float compute, so not integer-only.
    done = run_cli("rescore", str(out), "--variant", "int8", "--weight-only", "wide", home=home)
    assert done.returncode in (0, 1), done.stderr
    report = _report(out)
    weight_only = next(v for v in report["variants"] if v["name"] == "int8_q:wo=wide")
    assert weight_only["status"] == "done" and weight_only["parent"] == "int8"
    assert weight_only["command"].endswith("--variant int8 --weight-only wide")
    tflite = out / f"{weight_only['file_id']}.tflite"
    assert weight_only["deployability"]["integer_only"]["integer_only"] is False
    assert _float_tensors_inside(tflite)  # LiteRT's own tensor types say the same
    rung = _rung(report, "weight_only", ("wide",), weight_only["name"])
    assert rung.tried and rung.integer_only is False
    # Its agreement, recomputed from its .tflite and the original on the CSV's images.
    _, model, data, _ = finished_run
    images = _inputs(data)
    ref = _reference_probs(model, images).argmax(axis=1)
    tfl = _tflite_probs(tflite, images).argmax(axis=1)
    assert weight_only["top1_agreement_pct"] == pytest.approx(100 * np.mean(ref == tfl))


def _register_copy(home: Path, original: Path, copy: Path) -> None:
    """Give the copied run folder its own store row (a new id), so each test re-scores its own."""
    from core.jobs.launch import new_run_id

    run_id = new_run_id()
    status = rundir.read_json(original / rundir.STATUS)
    rundir.write_json_atomic(copy / rundir.STATUS, {**status, "run_id": run_id})
    with open_store(home) as store:
        job = rundir.read_json(original / rundir.JOB)
        store.create_run(run_id, name="copy", run_dir=copy, job=job)
        store.sync_report(run_id, _report(copy))
        store.set_status(run_id, RunStatus.DONE)


@pytest.mark.slow
def test_rescore_refuses_with_one_line(
    finished_run: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    home, _model, _data, original = finished_run
    out = tmp_path / "out"
    shutil.copytree(original, out)
    _register_copy(home, original, out)
    cases = [
        ("int8", [" "], "no layer chosen"),
        ("int8", ["wide", "nope"], "int8 has no layer named nope"),
        ("float32", ["wide"], "float32 cannot keep layers in float"),
        ("int4", ["wide"], "this run has no variant int4"),
    ]
    for parent, layers, message in cases:
        with pytest.raises(QuantLensError, match=message):
            add_rescore_variant(out, parent, layers, home=home)
    unchanged = _report(out)
    assert sorted(v["name"] for v in unchanged["variants"]) == ["float32", "int8"]
    status = rundir.read_json(out / rundir.STATUS)
    rundir.write_json_atomic(out / rundir.STATUS, {**status, "status": "running"})
    with pytest.raises(QuantLensError, match="the run is still running"):
        add_rescore_variant(out, "int8", ["wide"], home=home)
    done = run_cli("rescore", str(out), "--variant", "int8", "--keep-float", "wide", home=home)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: the run is still running")


@pytest.mark.slow
def test_a_failed_rescore_gives_the_run_its_status_back(
    finished_run: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    """The re-score is queued, then ends as cancelled: the run is `done` again, its finished
    variants stand, and the new variant says it was cancelled."""
    home, _model, _data, original = finished_run
    out = tmp_path / "out"
    shutil.copytree(original, out)
    _register_copy(home, original, out)
    name = add_rescore_variant(out, "int8", ["wide"], home=home)
    assert rundir.read_json(out / rundir.STATUS)["status"] == "queued"
    from core.jobs.outcome import close_unfinished_variants

    close_unfinished_variants(out, VariantStatus.CANCELLED, "cancelled by the user")
    finish_run(out, RunStatus.CANCELLED, "cancelled by the user", home=home)
    status = rundir.read_json(out / rundir.STATUS)
    assert status["status"] == "done"
    assert status["error"] == f"re-scoring {name} cancelled: cancelled by the user"
    report = _report(out)
    assert report["run"]["status"] == "done"
    by_name = {v["name"]: v for v in report["variants"]}
    assert by_name[name]["status"] == "cancelled" and by_name["int8"]["status"] == "done"


@pytest.mark.slow
def test_rescore_refuses_images_that_changed_since_the_run(
    finished_run: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    """A re-score on other images than the finished variants' would compare it on a different
    footing: the worker refuses, the run keeps its status, the new variant says why."""
    from PIL import Image

    home, _model, data, original = finished_run
    out = tmp_path / "out"
    shutil.copytree(original, out)
    _register_copy(home, original, out)
    moved = tmp_path / "data"
    shutil.copytree(data.parent, moved)
    Image.new("RGB", (16, 16), (255, 0, 0)).save(moved / "0.png")  # one image edited
    job = rundir.read_json(out / rundir.JOB)
    rundir.write_json_atomic(out / rundir.JOB, {**job, "data_path": str(moved / data.name)})
    done = run_cli("rescore", str(out), "--variant", "int8", "--keep-float", "wide", home=home)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert "the data set changed since this run was made" in last
    status = rundir.read_json(out / rundir.STATUS)
    assert status["status"] == "done" and status["error"].startswith("re-scoring int8:keep=wide")
    by_name = {v["name"]: v for v in _report(out)["variants"]}
    assert by_name["int8:keep=wide"]["status"] == "failed"
    assert "the data set changed" in by_name["int8:keep=wide"]["error"]
    assert by_name["int8"]["status"] == "done" and _report(out)["run"]["status"] == "done"


@pytest.mark.slow
def test_rescoring_a_tracked_run_adds_its_variant_to_the_same_mlflow_run(
    finished_run: tuple[Path, Path, Path, Path], tmp_path: Path
) -> None:
    """A run logged with --mlflow and then re-scored is still one MLflow run: the derived
    variant joins it as one more nested run, read back with MLflow's own client."""
    from mlflow.tracking import MlflowClient

    from core.reporting.tracking import log_finished_run

    home, _, _, original = finished_run
    out = tmp_path / "out"
    shutil.copytree(original, out)
    _register_copy(home, original, out)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = log_finished_run(out, uri)
    assert first["error"] is None
    job = json.loads((out / rundir.JOB).read_text())
    (out / rundir.JOB).write_text(json.dumps({**job, "mlflow_uri": uri}))  # as --mlflow does
    done = run_cli("rescore", str(out), "--variant", "int8", "--keep-float", "wide,mix", home=home)
    assert done.returncode == 1, done.stderr
    assert _report(out)["tracking"]["run_id"] == first["run_id"]
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([first["experiment_id"]])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [p.info.run_id for p in parents] == [first["run_id"]]
    children = {r.data.tags["quantlens.variant"]: r for r in runs if r not in parents}
    assert sorted(children) == ["float32", "int8", "int8:keep=mix+wide"]
    derived = children["int8:keep=mix+wide"]
    assert derived.data.params["float_layers"] == "mix,wide"
    assert derived.data.metrics["top1_agreement_pct"] == next(
        v["top1_agreement_pct"]
        for v in _report(out)["variants"]
        if v["name"] == derived.info.run_name
    )
    tags = client.get_run(first["run_id"]).data.tags
    assert tags["quantlens.variants"] == ",".join(v["name"] for v in _report(out)["variants"])


@pytest.mark.slow
def test_rescore_refuses_calibration_images_that_changed_since_the_run(tmp_path: Path) -> None:
    """A run calibrated on --calibration-data records that set's content hash; after one of
    its images is edited, a re-score refuses in one line instead of calibrating the new
    variant on other images than its siblings."""
    from PIL import Image

    model = build_outlier_model(tmp_path / "outlier")
    data = _write_images(tmp_path / "data")
    calibration = _write_images(tmp_path / "calibration")
    out = tmp_path / "out"
    done = run_cli(
        "run", str(model), "--data", str(data), "--modes", "int8", "--preprocess", "unit",
        "--calibration-data", str(calibration.parent), "--calibration-samples", "8",
        "--latency-runs", "3", "--out", str(out), home=tmp_path,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    recorded = _report(out)["calibration"]
    assert recorded["source"] == "separate" and len(recorded["sha256"]) == 64
    Image.new("RGB", (16, 16), (0, 0, 255)).save(calibration.parent / "5.png")  # one edited
    done = run_cli("rescore", str(out), "--variant", "int8", "--keep-float", "wide", home=tmp_path)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert "the calibration data (--calibration-data) changed since this run was made" in last
    by_name = {v["name"]: v for v in _report(out)["variants"]}
    assert by_name["int8:keep=wide"]["status"] == "failed"
    assert by_name["int8"]["status"] == "done" and _report(out)["run"]["status"] == "done"
    assert not list(out.glob("int8-k*.tflite"))  # no file of the refused variant
