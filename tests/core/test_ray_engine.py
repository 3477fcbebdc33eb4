"""The Ray engine (`--engine ray`) on a real local Ray: the same numbers as the local engine, a
dead worker's shard re-run, a crashing variant failing alone, and a wrong address in one line.

The session's one Ray on 127.0.0.1 (tests/core/conftest.py's `ray_address`) serves every test
here: the CLI runs join it through --ray-address, the in-process tests through the open session.
The private local Ray a run starts without an address is tested in test_ray_cluster.py.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.core.test_cli import REPO, data_with_broken_images, run_cli  # noqa: F401 (a fixture)

if TYPE_CHECKING:
    from core.engine.ray_engine import Evaluation

pytestmark = pytest.mark.slow

MODES = "float32,float16,int8"


def _run(engine: str, model: Path, data: Path, home: Path, *extra: str) -> Path:
    out = home / f"run-{engine}"
    done = run_cli(
        "run",
        str(model),
        "--data",
        str(data),
        "--modes",
        MODES,
        "--preprocess",
        "unit",
        "--latency-runs",
        "10",
        "--threads",
        "1",
        "--engine",
        engine,
        *extra,
        "--out",
        str(out),
        home=home,
    )
    # The tiny model is near chance on these labels, so no variant may PASS: exit 1.
    assert done.returncode == 1, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def both_runs(
    ray_address: str,
    tiny_models: dict[str, Path],
    data_with_broken_images: Path,  # noqa: F811 (the fixture imported above)
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path]:
    home = tmp_path_factory.mktemp("ray_home")
    model = tiny_models["logits_saved_model"]  # logits: the softmax decision crosses engines
    local = _run("local", model, data_with_broken_images, home)
    on_ray = _run("ray", model, data_with_broken_images, home, "--ray-address", ray_address)
    return local, on_ray


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _assert_same_table(local: Path, on_ray: Path) -> None:
    """Every column of a per-sample CSV: text and integers equal, floats within 1e-5."""
    a, b = _rows(local), _rows(on_ray)
    assert len(a) == len(b) > 0
    assert list(a[0]) == list(b[0])
    for row_a, row_b in zip(a, b, strict=True):
        for column in row_a:
            x, y = row_a[column], row_b[column]
            try:
                assert float(x) == pytest.approx(float(y), abs=1e-5), (column, row_a, row_b)
            except ValueError:
                assert x == y, (column, row_a, row_b)


def test_ray_engine_writes_the_local_engines_numbers(both_runs: tuple[Path, Path]) -> None:
    local, on_ray = both_runs
    _assert_same_table(local / "samples.csv", on_ray / "samples.csv")
    assert _rows(local / "skipped.csv") == _rows(on_ray / "skipped.csv")
    assert len(_rows(on_ray / "skipped.csv")) == 2  # the truncated PNG and the text file
    np.testing.assert_allclose(
        np.load(on_ray / "reference.probs.npy"), np.load(local / "reference.probs.npy"), atol=1e-6
    )
    report_local = json.loads((local / "report.json").read_text())
    report_ray = json.loads((on_ray / "report.json").read_text())
    variants = {v["name"]: v for v in report_ray["variants"]}
    assert set(variants) == set(MODES.split(","))
    for expected in report_local["variants"]:
        name = expected["name"]
        got = variants[name]
        assert got["status"] == expected["status"] == "done", got.get("error")
        files = got["file_id"]
        _assert_same_table(local / f"{files}.samples.csv", on_ray / f"{files}.samples.csv")
        np.testing.assert_allclose(
            np.load(on_ray / f"{files}.probs.npy"), np.load(local / f"{files}.probs.npy"), atol=1e-6
        )
        for key in ("top1_agreement_pct", "disagreements", "disagreement_split", "size_bytes"):
            assert got[key] == expected[key], key
        assert got["top1_agreement_ci95"] == pytest.approx(expected["top1_agreement_ci95"])


def test_a_ray_run_diagnoses_as_the_local_engine(both_runs: tuple[Path, Path]) -> None:
    """The head diagnoses int8 on Ray too, decoding the flipped images itself: the same table.

    A local run leaves a variant that flipped nothing undiagnosed until asked (a Ray run cannot
    be re-opened, so it diagnoses every variant): `export` asks, as a user's would."""
    local, on_ray = both_runs
    if "int8" not in json.loads((local / "report.json").read_text()).get("diagnosis", {}):
        exported = run_cli("export", str(local), home=local.parent)
        assert exported.returncode == 0, exported.stdout + exported.stderr
    diagnosis = {
        where: json.loads((where / "report.json").read_text())["diagnosis"]
        for where in (local, on_ray)
    }
    assert "int8" in diagnosis[local] and "int8" in diagnosis[on_ray]
    _assert_same_table(local / "int8.layers.csv", on_ray / "int8.layers.csv")
    assert diagnosis[on_ray]["int8"] == diagnosis[local]["int8"]  # the suspects, in order


def test_ray_agreement_recomputed_from_its_files(both_runs: tuple[Path, Path]) -> None:
    """Agreement straight from the probability files, without QuantLens's comparison code."""
    _, on_ray = both_runs
    report = json.loads((on_ray / "report.json").read_text())
    reference = np.load(on_ray / "reference.probs.npy")
    assert reference.shape[0] == report["dataset"]["num_samples"] == 24
    for variant in report["variants"]:
        probs = np.load(on_ray / f"{variant['file_id']}.probs.npy")
        agree = np.argmax(probs, axis=1) == np.argmax(reference, axis=1)
        assert variant["top1_agreement_pct"] == pytest.approx(100 * agree.mean())


def test_ray_run_records_its_engine_and_nodes(
    ray_connected: str, both_runs: tuple[Path, Path]
) -> None:
    local, on_ray = both_runs
    engine = json.loads((on_ray / "report.json").read_text())["engine"]
    assert engine["name"] == "ray"
    import ray

    assert engine["nodes"] == [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]]
    assert engine["cpus"] == 2
    assert socket.gethostname() in engine["latency_node"]
    assert json.loads((local / "report.json").read_text())["engine"]["name"] == "local"
    command = json.loads((on_ray / "report.json").read_text())["run"]["command"]
    assert "--engine ray" in command and f"--ray-address {engine['address']}" in command


def _samples(csv_path: Path) -> list:  # type: ignore[type-arg]
    from core.types import Sample

    rows = _rows(csv_path)
    return [
        Sample(index=i, path=str(csv_path.parent / r["filepath"]), relpath=r["filepath"])
        for i, r in enumerate(rows)
    ]


def _convert(model: Path, mode: str, images: np.ndarray, target: Path) -> Path:
    from core.engine.backends import tflite_from_reference
    from core.engine.models import load_reference, model_sha256
    from core.types import VariantSpec

    reference = load_reference(model)
    result = tflite_from_reference(
        reference,
        VariantSpec.parse(mode),
        model_sha256=model_sha256(model),
        calibration=images,
        preset="unit",
        probe=images[:2],
        cache_dir=None,
    )
    target.write_bytes(result.tflite)
    return target


@pytest.fixture(scope="module")
def two_variants(
    tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> list[tuple[str, Path]]:
    rng = np.random.default_rng(0)
    images = rng.random((8, 16, 16, 3), dtype=np.float32)
    folder = tmp_path_factory.mktemp("ray_variants")
    model = tiny_models["saved_model"]
    return [
        (mode, _convert(model, mode, images, folder / f"{mode}.tflite"))
        for mode in ("float16", "dynamic")
    ]


def _evaluate(model: Path, data: Path, variants: list[tuple[str, Path]]) -> Evaluation:
    from core.engine.ray_engine import ReferenceSource, evaluate

    return evaluate(
        _samples(data),
        preset="unit",
        image_shape=(16, 16, 3),
        reference=ReferenceSource(path=model),
        variants=variants,
    )


@pytest.fixture(scope="module")
def clean(
    ray_connected: str,
    tiny_models: dict[str, Path],
    tiny_data: Path,
    two_variants: list[tuple[str, Path]],
) -> Evaluation:
    """The pass without any fault, once for the tests that inject one."""
    return _evaluate(tiny_models["saved_model"], tiny_data, two_variants)


def _unpacked_models() -> set[Path]:
    """The folders the Ray actors unpack the model into, in this host's temp folder."""
    return set(Path(tempfile.gettempdir()).glob("quantlens-ray-*"))


def test_worker_killed_mid_shard_reruns_it(
    ray_connected: str,
    clean: Evaluation,
    tiny_models: dict[str, Path],
    tiny_data: Path,
    two_variants: list[tuple[str, Path]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = tiny_models["saved_model"]
    marker = tmp_path / "fired"
    monkeypatch.setenv("QUANTLENS_FAULT", "segv@shard")
    monkeypatch.setenv("QUANTLENS_FAULT_ONCE", str(marker))
    unpacked_before = _unpacked_models()
    retried = _evaluate(model, tiny_data, two_variants)
    assert marker.exists()  # a worker really died with SIGSEGV in a shard
    # The dead actor had loaded the model: no copy of it stays behind in the temp folder.
    assert _unpacked_models() - unpacked_before == set()
    assert retried.passes == 1  # Ray re-ran the shard; no fallback pass was needed
    assert [s.index for s in retried.kept] == [s.index for s in clean.kept]
    assert len(retried.kept) == 24 and retried.errors == {}
    np.testing.assert_array_equal(retried.reference, clean.reference)
    for name, _ in two_variants:
        np.testing.assert_array_equal(retried.variants[name], clean.variants[name])


def test_a_variant_that_kills_its_workers_fails_alone(
    ray_connected: str,
    clean: Evaluation,
    tiny_models: dict[str, Path],
    tiny_data: Path,
    two_variants: list[tuple[str, Path]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = tiny_models["saved_model"]
    monkeypatch.setenv("QUANTLENS_FAULT", "segv@infer:dynamic")
    crashed = _evaluate(model, tiny_data, two_variants)
    assert set(crashed.errors) == {"dynamic"}
    assert crashed.passes == 4  # all together, then the original alone, then each variant
    assert "dynamic crashed its Ray worker" in crashed.errors["dynamic"]
    assert "\n" not in crashed.errors["dynamic"]
    np.testing.assert_array_equal(crashed.reference, clean.reference)
    np.testing.assert_array_equal(crashed.variants["float16"], clean.variants["float16"])


def test_a_connect_goes_on_as_soon_as_the_cluster_answers(ray_address: str) -> None:
    """The connect limit bounds a connect; it is not a wait. With a limit of 10**6 s, joining
    the session's Ray (in a fresh process, as the job's worker does) returns as soon as the
    cluster answers: the connect's thread stays alive for the session, so waiting for that
    thread would wait out the whole limit."""
    code = (
        "import sys\n"
        "from core.engine.ray_engine import ray_session\n"
        "with ray_session(sys.argv[1], connect_timeout_s=10**6) as info:\n"
        "    print(info.cpus)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, ray_address], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"}, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["2"]


def test_unreachable_ray_address_fails_the_run_in_one_line(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    done = run_cli(
        "run",
        str(tiny_models["saved_model"]),
        "--data",
        str(tiny_data),
        "--modes",
        "float16",
        "--engine",
        "ray",
        "--ray-address",
        address,
        "--out",
        str(tmp_path / "run"),
        home=tmp_path,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1
    assert f"cannot reach the Ray cluster at {address}" in error[0]
    assert "ray start --head" in error[0]


def _events(run_dir: Path) -> list[dict[str, str]]:
    lines = (run_dir / "progress.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _cluster_passes(run_dir: Path) -> int:
    return sum(e["message"].startswith("evaluating on Ray") for e in _events(run_dir))


def test_a_crash_converting_on_the_head_fails_that_variant_alone(
    ray_address: str, tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    """The head converts: a segfault there is the variant's, and a new worker runs the rest."""
    out = tmp_path / "run"
    done = run_cli(
        "run", str(tiny_models["saved_model"]), "--data", str(tiny_data),
        "--modes", "float16,int8", "--preprocess", "unit", "--latency-runs", "3",
        "--threads", "1", "--engine", "ray", "--ray-address", ray_address, "--out", str(out),
        home=tmp_path, env={"QUANTLENS_FAULT": "segv@convert:float16"},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    variants = {v["name"]: v for v in report["variants"]}
    assert variants["float16"]["status"] == "crashed"
    assert variants["float16"]["error"] == "crashed (SIGSEGV) during conversion"
    for name in ("float32", "int8"):
        assert variants[name]["status"] == "done", variants[name].get("error")
        assert variants[name]["n"] == 24
    assert report["engine"]["name"] == "ray"
    assert _cluster_passes(out) == 1  # the first worker died before its pass


def test_a_crash_of_the_head_during_the_cluster_pass_is_blamed_on_no_variant(
    ray_address: str, tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    """Every variant is in the one pass: none of them caused a crash of the head, so the run
    ends with one line and no variant is restarted as if it had."""
    out = tmp_path / "run"
    done = run_cli(
        "run", str(tiny_models["saved_model"]), "--data", str(tiny_data),
        "--modes", "float16", "--preprocess", "unit", "--latency-runs", "3",
        "--engine", "ray", "--ray-address", ray_address, "--out", str(out),
        home=tmp_path, env={"QUANTLENS_FAULT": "segv@evaluate"},
    )  # fmt: skip
    assert done.returncode == 3, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["status"] == "crashed"
    reason = "crashed (SIGSEGV) during evaluation on the Ray cluster"
    for variant in report["variants"]:
        assert (variant["status"], variant["error"]) == ("crashed", f"not run: {reason}")
    assert _cluster_passes(out) == 1


def test_the_ray_stage_records_every_variant_and_a_restart_reads_it_back(
    ray_connected: str, tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    from core.engine.stages.ray_evaluate import evaluate_on_ray
    from core.engine.stages.start import open_run
    from core.inputs import rundir
    from core.types import JobSpec, Preset, ProgressEvent

    job = JobSpec(
        model_path=str(tiny_models["saved_model"]),
        data_path=str(tiny_data),
        variants=("float16",),
        preset=Preset.UNIT,
        threads=1,
        engine="ray",
    )
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    events: list[ProgressEvent] = []
    run = open_run(job, run_dir, progress=events.append, cache_dir=None)
    first = evaluate_on_ray(run)
    assert run.pending() == []  # the local stages after it have nothing left to do
    report = rundir.read_json(run_dir / rundir.REPORT)
    assert {v["name"]: (v["status"], v["n"]) for v in report["variants"]} == {
        "float16": ("done", 24),
        "float32": ("done", 24),
    }
    # Agreement straight from the files the stage wrote.
    reference = np.load(run_dir / rundir.REFERENCE_PROBS)
    float16 = np.load(run_dir / "float16.probs.npy")
    agree = np.argmax(float16, axis=1) == np.argmax(reference, axis=1)
    assert report["variants"][0]["top1_agreement_pct"] == pytest.approx(100 * agree.mean())
    assert sum(e.step == "evaluate" and "on Ray" in e.message for e in events) == 1
    # A restarted worker with nothing pending reads the recorded outputs back, without Ray.
    before = (run_dir / rundir.REPORT).read_bytes()
    again_events: list[ProgressEvent] = []
    again = evaluate_on_ray(open_run(job, run_dir, progress=again_events.append, cache_dir=None))
    assert again_events == [] or all(e.step == "load" for e in again_events)
    np.testing.assert_array_equal(again.prob_rows(0, len(again)), first.prob_rows(0, len(first)))
    assert again.sample_indices == first.sample_indices
    assert (run_dir / rundir.REPORT).read_bytes() == before


def _auto_fix_run(engine: str, model: Path, data: Path, home: Path, *extra: str) -> Path:
    out = home / f"autofix-{engine}"
    run_cli(
        "run",
        str(model),
        "--data",
        str(data),
        "--modes",
        "int8",
        "--auto-fix=4",
        "--fix-seed",
        "5",
        "--preprocess",
        "unit",
        "--min-agreement",
        "99",
        "--latency-runs",
        "3",
        "--threads",
        "1",
        "--engine",
        engine,
        *extra,
        "--out",
        str(out),
        home=home,
    )
    return out


def test_auto_fix_on_ray_ranks_and_fixes_as_the_local_engine(
    ray_address: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The scan's candidates and the fix's steps run as Ray tasks: the same ranking, the same
    steps and the same derived variant as locally, and that variant reproduces from its file."""
    from tests.core.test_autofix import build_outlier_model
    from tests.core.test_cli_quantizer import _inputs, _reference_probs, _tflite_probs
    from tests.core.test_selective import _write_images

    home = tmp_path_factory.mktemp("ray_autofix")
    model = build_outlier_model(home / "outlier")
    data = _write_images(home / "data")
    local = _auto_fix_run("local", model, data, home)
    on_ray = _auto_fix_run("ray", model, data, home, "--ray-address", ray_address)
    reports = [json.loads((d / "report.json").read_text()) for d in (local, on_ray)]
    by_name = [{v["name"]: v for v in r["variants"]} for r in reports]
    fixes = [b["int8"]["auto_fix"] for b in by_name]
    assert "error" not in fixes[1], fixes[1]
    # The same --fix-seed splits the images the same way on both engines.
    searches = [f["search"] for f in fixes]
    assert searches[0]["seed"] == searches[1]["seed"] == 5
    assert searches[0]["selected_rows"] == searches[1]["selected_rows"]
    assert searches[0]["held_out_rows"] == searches[1]["held_out_rows"]
    assert [c["variant"] for c in searches[0]["candidates"]] == [
        c["variant"] for c in searches[1]["candidates"]
    ]
    # The same ranking: layers in measured order, each with its statistics rank and numbers.
    for got, expected in zip(fixes[1]["sensitivity"], fixes[0]["sensitivity"], strict=True):
        assert (got["layer"], got["stat_rank"], got["n"]) == (
            expected["layer"],
            expected["stat_rank"],
            expected["n"],
        )
        assert got["agreement_pct"] == expected["agreement_pct"]
        assert got["mean_kl"] == pytest.approx(expected["mean_kl"], rel=1e-4, abs=1e-7)
    # The same steps, stopping at the same one.
    for got, expected in zip(fixes[1]["steps"], fixes[0]["steps"], strict=True):
        assert got["layers"] == expected["layers"]
        assert got["agreement_pct"] == expected["agreement_pct"]
        assert got["meets_threshold"] == expected["meets_threshold"]
        assert got["size_bytes"] == expected["size_bytes"]
    assert fixes[1]["steps"][-1]["meets_threshold"]
    # The same derived variant, evaluated on the cluster with the same agreement.
    name = fixes[0]["variant"]
    assert name is not None and fixes[1]["variant"] == name
    derived = by_name[1][name]
    assert derived["status"] == "done", derived.get("error")
    assert derived["top1_agreement_pct"] == by_name[0][name]["top1_agreement_pct"]
    assert derived["latency_ms"]["n"] == 3
    files = derived["file_id"]
    _assert_same_table(local / f"{files}.samples.csv", on_ray / f"{files}.samples.csv")
    # Recomputed without QuantLens: the original in TensorFlow, the file in ai_edge_litert.
    images = _inputs(data)
    reference = _reference_probs(model, images).argmax(axis=1)
    derived_top1 = _tflite_probs(on_ray / f"{files}.tflite", images).argmax(axis=1)
    assert derived["top1_agreement_pct"] == pytest.approx(100 * np.mean(reference == derived_top1))
    assert "--auto-fix=4" in reports[1]["run"]["command"]
    assert "--fix-seed 5" in reports[1]["run"]["command"]


def test_sweep_points_quantize_as_tasks_into_the_heads_bytes(
    ray_connected: str, tiny_models: dict[str, Path]
) -> None:
    """ray_engine.quantize_as_tasks: each point's recipe runs as a Ray task and returns the bytes
    the head makes from the same float32 model and calibration images; a point the quantizer
    refuses carries its error, and the others are kept."""
    from core.engine.backends import tflite_from_reference
    from core.engine.models import load_reference, model_sha256
    from core.engine.quantizer import quantize_float_tflite
    from core.engine.ray_engine import quantize_as_tasks
    from core.types import Backend, Mode, VariantSpec

    model = tiny_models["logits_saved_model"]
    float_tflite = tflite_from_reference(
        load_reference(model),
        VariantSpec(mode=Mode.FLOAT32),
        model_sha256=model_sha256(model),
        cache_dir=None,
    ).tflite
    images = np.random.default_rng(3).random((8, 16, 16, 3), dtype=np.float32)
    int8 = VariantSpec(mode=Mode.INT8, backend=Backend.QUANTIZER)
    int16x8 = VariantSpec(mode=Mode.INT16X8, backend=Backend.QUANTIZER)
    refused = VariantSpec(mode=Mode.INT8, backend=Backend.QUANTIZER, float_layers=("no_such",))
    points = [
        (int8, np.array([0, 2, 5])),
        (int8, np.array([1, 3, 4, 6, 7])),
        (refused, np.array([0, 1])),
        (int16x8, np.array([0, 2, 5])),
    ]
    reported: list[int] = []
    found = quantize_as_tasks(float_tflite, images, points, progress=reported.append)
    assert reported == [0, 1, 2, 3]
    assert found[2].tflite is None and found[2].error and "no_such" in found[2].error
    for position in (0, 1, 3):
        spec, draw = points[position]
        assert found[position].error is None, found[position].error
        assert found[position].tflite == quantize_float_tflite(float_tflite, spec, images[draw])
    # Really different inputs: other calibration images, other ranges, other bytes.
    assert found[0].tflite != found[1].tflite
