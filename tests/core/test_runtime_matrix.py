"""The runtime matrix: each cell recomputed here with a directly constructed `ai_edge_litert`
interpreter under the same resolver settings, one image per invoke, the input quantized and the
agreement counted in a few lines of numpy (nothing shared with core.engine.runtime or the
stage).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.types import JobSpec, Preset, Runtime, parse_runtimes

RESOLVER = {
    "xnnpack": "AUTO",
    "xnnpack1": "AUTO",
    "builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES",
    "reference": "BUILTIN_REF",
}
SUBSET = 10  # of the tiny data set's 24 images


def test_runtimes_parse_in_column_order_and_refuse_unknown_names() -> None:
    from core.errors import QuantLensError

    assert parse_runtimes(" tflm,Reference,xnnpack ") == (
        Runtime.XNNPACK,
        Runtime.REFERENCE,
        Runtime.TFLM,
    )
    assert parse_runtimes("") == parse_runtimes(None) == ()
    with pytest.raises(QuantLensError, match="unknown runtime 'gpu'; choose from xnnpack,"):
        parse_runtimes("xnnpack,gpu")
    job = JobSpec(model_path="m", data_path="d", runtimes=(Runtime.BUILTIN,), runtime_images=None)
    assert JobSpec.from_dict(job.to_dict()) == job


@pytest.mark.parametrize("images", [None, 50, 200])
def test_the_runtimes_flag_round_trips_through_the_reproduce_command(
    tmp_path: Path, images: int | None
) -> None:
    import shlex

    from core.cli import _job_from_args, _parser
    from core.options import reproduce_command

    (tmp_path / "m.keras").write_bytes(b"")
    (tmp_path / "d.csv").write_text("filepath,label\n", encoding="utf-8")
    job = JobSpec(
        model_path=str(tmp_path / "m.keras"),
        data_path=str(tmp_path / "d.csv"),
        runtimes=(Runtime.BUILTIN, Runtime.TFLM),
        runtime_images=images,
    )
    argv = shlex.split(reproduce_command(job))
    assert argv[argv.index("--runtimes") + 1] == "builtin,tflm"
    assert _job_from_args(_parser().parse_args(argv[3:])) == job
    plain = JobSpec(model_path=job.model_path, data_path=job.data_path)
    assert "--runtimes" not in reproduce_command(plain)  # a run without the matrix says nothing


def _top1_bare(tflite: bytes, floats: np.ndarray, runtime: str) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=tflite,
        num_threads=1,
        experimental_op_resolver_type=getattr(OpResolverType, RESOLVER[runtime]),
    )
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    answers = []
    for image in floats:
        x = image[None]
        if inp["dtype"] != np.float32:
            scale, zero_point = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            scaled = x.astype(np.float64) / scale
            q = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) + zero_point
            x = np.clip(q, info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        # A positive scale keeps the order: the top-1 of the raw output is the answer's.
        answers.append(int(np.argmax(interpreter.get_tensor(out["index"])[0])))
    return np.asarray(answers)


@pytest.fixture(scope="module")
def matrix_run(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    from core.engine.pipeline import run_job
    from core.inputs import rundir

    run_dir = tmp_path_factory.mktemp("matrix") / "run"
    run_dir.mkdir()
    job = JobSpec(
        model_path=str(tiny_models["keras"]),
        data_path=str(tiny_data),
        variants=("int8",),
        preset=Preset.UNIT,
        threads=2,
        latency_runs=2,
        warmup_runs=1,
        runtimes=tuple(Runtime),
        runtime_images=SUBSET,
    )
    run_job(job, run_dir, progress=lambda _e: None, cache_dir=None)
    return {"dir": run_dir, "report": rundir.read_json(run_dir / rundir.REPORT)}


def _images(tiny_data: Path, indices: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The data set's images at `indices` under the unit preset, and their labels."""
    from core.inputs.images import decode_image

    with tiny_data.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    pixels = np.stack(
        [
            decode_image(tiny_data.parent / rows[i]["filepath"], height=16, width=16, channels=3)
            for i in indices
        ]
    )
    labels = np.asarray([int(rows[i]["label"]) for i in indices])
    return pixels.astype(np.float32) / np.float32(255.0), labels


@pytest.mark.slow
def test_each_cell_is_what_a_bare_interpreter_gives(
    matrix_run: dict[str, Any], tiny_data: Path
) -> None:
    from core.inputs import rundir

    report, run_dir = matrix_run["report"], matrix_run["dir"]
    matrix = report["runtimes"]
    assert matrix["runtimes"] == ["xnnpack", "xnnpack1", "builtin", "reference", "tflm"]
    with (run_dir / rundir.SAMPLES).open(encoding="utf-8") as f:
        original = {int(r["index"]): int(r["ref_top1"]) for r in csv.DictReader(f)}
    every = sorted(original)
    subset = matrix["subset_indices"]
    assert matrix["total"] == 24 and matrix["subset"] == SUBSET == len(set(subset))
    assert set(subset) <= set(every)
    cells = {(c["variant"], c["runtime"]): c for c in matrix["cells"]}
    entries = {v["name"]: v for v in report["variants"]}
    assert set(entries) == {"int8", "float32"}  # the pivot joins the matrix
    for name, entry in entries.items():
        tflite = rundir.tflite_path(run_dir, rundir.entry_files(entry)).read_bytes()
        all_images, _ = _images(tiny_data, every)
        xnnpack = dict(zip(every, _top1_bare(tflite, all_images, "xnnpack"), strict=True))
        for runtime in ("xnnpack", "xnnpack1", "builtin", "reference"):
            cell = cells[(name, runtime)]
            indices = every if runtime in ("xnnpack", "xnnpack1") else subset
            images, labels = _images(tiny_data, indices)
            top1 = _top1_bare(tflite, images, runtime)
            agree = top1 == np.asarray([original[i] for i in indices])
            assert cell["reason"] is None, cell
            assert cell["n"] == len(indices)
            assert cell["agree"] == int(agree.sum()), (name, runtime)
            assert cell["agreement_pct"] == pytest.approx(100.0 * agree.mean())
            assert cell["accuracy_pct"] == pytest.approx(100.0 * np.mean(top1 == labels))
            assert cell["ci_low_pct"] <= cell["agreement_pct"] <= cell["ci_high_pct"]
            if name == "int8":  # integer kernels: the batched evaluation is batch 1, bit for bit
                flips = [i for i, t in zip(indices, top1, strict=True) if t != xnnpack[i]]
                assert cell["runtime_flips"] == flips, (name, runtime)
        assert cells[(name, "xnnpack")]["agree"] * 100.0 / 24 == pytest.approx(
            entry["top1_agreement_pct"]
        )


def _top1_tflm(tflite: bytes, floats: np.ndarray) -> np.ndarray:
    """Top-1 answers from TFLite-Micro's own interpreter, the input quantized here."""
    import contextlib
    import io

    from ai_edge_litert.interpreter import Interpreter
    from tflite_micro.python.tflite_micro import runtime as tflm

    details = Interpreter(model_content=tflite).get_input_details()[0]
    with contextlib.redirect_stdout(io.StringIO()):
        micro = tflm.Interpreter.from_bytes(tflite)
    answers = []
    for image in floats:
        x = image[None]
        if details["dtype"] != np.float32:
            scale, zero_point = details["quantization"]
            scaled = x.astype(np.float64) / scale
            q = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) + zero_point
            info = np.iinfo(details["dtype"])
            x = np.clip(q, info.min, info.max).astype(details["dtype"])
        micro.set_input(x, 0)
        micro.invoke()
        answers.append(int(np.argmax(micro.get_output(0)[0])))
    return np.asarray(answers)


@pytest.mark.slow
def test_the_tflite_micro_cell_is_what_tflite_micro_gives(
    matrix_run: dict[str, Any], tiny_data: Path
) -> None:
    pytest.importorskip("tflite_micro")
    from core.inputs import rundir

    report, run_dir = matrix_run["report"], matrix_run["dir"]
    matrix = report["runtimes"]
    subset = matrix["subset_indices"]
    cell = next(c for c in matrix["cells"] if (c["variant"], c["runtime"]) == ("int8", "tflm"))
    entry = next(v for v in report["variants"] if v["name"] == "int8")
    tflite = rundir.tflite_path(run_dir, rundir.entry_files(entry)).read_bytes()
    with (run_dir / rundir.SAMPLES).open(encoding="utf-8") as f:
        original = {int(r["index"]): int(r["ref_top1"]) for r in csv.DictReader(f)}
    images, _ = _images(tiny_data, subset)
    top1 = _top1_tflm(tflite, images)
    assert cell["reason"] is None and cell["n"] == len(subset)
    assert cell["agree"] == int((top1 == np.asarray([original[i] for i in subset])).sum())
    every = sorted(original)
    all_images, _ = _images(tiny_data, every)
    xnnpack = dict(zip(every, _top1_bare(tflite, all_images, "xnnpack"), strict=True))
    assert cell["runtime_flips"] == [
        i for i, t in zip(subset, top1, strict=True) if t != xnnpack[i]
    ]


@pytest.mark.slow
def test_a_runtime_that_cannot_run_a_variant_says_why_and_the_rest_is_filled(
    matrix_run: dict[str, Any],
) -> None:
    from core.engine.runtime import TFLM_INSTALL, tflm_available

    cells = {(c["variant"], c["runtime"]): c for c in matrix_run["report"]["runtimes"]["cells"]}
    float_cell, int8_cell = cells[("float32", "tflm")], cells[("int8", "tflm")]
    if tflm_available() is not None:
        assert float_cell["reason"] == int8_cell["reason"] == TFLM_INSTALL
    else:
        assert float_cell["reason"].startswith("float32 is not integer-only (")
        assert float_cell["reason"].endswith("TFLite-Micro runs integer models")
        assert int8_cell["reason"] is None and int8_cell["n"] == SUBSET
    assert all(c["reason"] is None for (_, r), c in cells.items() if r != "tflm")


@pytest.mark.slow
def test_the_matrix_reads_back_typed(matrix_run: dict[str, Any]) -> None:
    from core.reporting.runmodel import read_report

    matrix = read_report(matrix_run["dir"]).runtimes
    assert matrix is not None
    assert matrix.variants == ["float32", "int8"]
    cell = matrix.cell("int8", "reference")
    assert cell is not None and cell.measured and cell.n == SUBSET


@pytest.mark.slow
def test_the_cli_summary_and_report_html_show_the_matrix(matrix_run: dict[str, Any]) -> None:
    from core.reporting.html import render_report_html
    from core.reporting.runmodel import read_report
    from core.reporting.runtimes import cell_text, format_runtime_table

    report = read_report(matrix_run["dir"])
    matrix = report.runtimes
    assert matrix is not None
    cell = matrix.cell("int8", "reference")
    assert cell is not None
    words = cell_text(cell)
    assert f"n={SUBSET}" in words and "runtime flip" in words
    table = format_runtime_table(report)
    assert "reference kernels" in table and "TFLite-Micro" in table
    int8_row = next(line for line in table.splitlines() if line.startswith("int8"))
    assert words in int8_row
    assert f"on {SUBSET} of them, drawn with seed 0" in table
    html = render_report_html(matrix_run["dir"])
    assert '<table id="runtimes">' in html and words in html


def test_a_run_that_asks_for_no_runtimes_runs_nothing(tmp_path: Path) -> None:
    """No --runtimes: the stage returns before it reads a file or builds a runner."""
    from types import SimpleNamespace
    from typing import cast

    from core.engine.stages.context import RunContext
    from core.engine.stages.reference import ReferenceOutputs
    from core.engine.stages.runtimes import run_runtime_matrix

    run = SimpleNamespace(job=JobSpec(model_path="m", data_path="d"), run_dir=tmp_path)
    run_runtime_matrix(cast(RunContext, run), cast(ReferenceOutputs, None))
    assert list(tmp_path.iterdir()) == []  # no report written, nothing read


def test_the_subset_is_seeded_distinct_and_bounded() -> None:
    from core.engine.stages.runtimes import subset_positions

    first = subset_positions(540, 200, seed=0)
    assert len(set(first.tolist())) == 200 and list(first) == sorted(first)
    assert (subset_positions(540, 200, seed=0) == first).all()
    assert not (subset_positions(540, 200, seed=1) == first).all()
    assert list(subset_positions(24, 200, seed=0)) == list(range(24))
    assert list(subset_positions(24, None, seed=0)) == list(range(24))
