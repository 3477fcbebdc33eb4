"""The deployability pre-flight on a real run (tiny model, 20 images, float32 + int8 + dynamic):
each variant's `deployability` in report.json, checked against independent recomputations:
the integer-only verdict from LiteRT's own tensor details, TFLite-Micro's arena by planning
the model again at that size and 512 bytes less, and Vela's NPU/CPU split by running the Vela
CLI here and reading its printed counts. Plus the cells that cannot be computed, and the
per-target recommendation the finish stage stores."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.engine import micro, vela
from core.inputs import rundir
from core.reporting.sections.deployability import CellStatus
from core.reporting.targets import NO_INTEGER_OPS
from tests.core.conftest import unlabelled_copy
from tests.core.test_cli import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]:
    root = tmp_path_factory.mktemp("deploy")
    data = unlabelled_copy(tiny_data, root / "data")
    folder = root / "run"
    done = run_cli(
        "run",
        str(tiny_models["keras"]),
        "--data",
        str(data),
        "--modes",
        "float32,dynamic,int8",
        "--preprocess",
        "unit",
        "--samples",
        "20",
        "--calibration-samples",
        "8",
        "--latency-runs",
        "3",
        "--threads",
        "1",
        "--min-agreement",
        "50",
        "--target",
        "integer-only",
        "--arena-kb",
        "512",
        "--perturb",
        "--out",
        str(folder),
        home=root / "home",
    )
    assert done.returncode in (0, 1), done.stdout + done.stderr[-3000:]
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    return done, report, folder


def _variant(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in report["variants"] if v["name"] == name)


def _float_tensors_inside(path: Path) -> bool:
    """Independently of core.engine.flatbuffer: does any op (not a graph input or output, not
    the casts at the edges) read or write a float32 tensor, by LiteRT's own op details?"""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    types = {t["index"]: t["dtype"] for t in it.get_tensor_details()}
    for op in it._get_ops_details():
        if op["op_name"] in ("QUANTIZE", "DEQUANTIZE"):
            continue
        tensors = [i for i in [*op["inputs"], *op["outputs"]] if i >= 0]
        if any(types[i] == np.float32 for i in tensors):
            return True
    return False


def test_every_variant_gets_a_preflight_matching_an_independent_check(run) -> None:  # type: ignore[no-untyped-def]
    _, report, folder = run
    for v in report["variants"]:
        found = v["deployability"]
        path = folder / f"{v['file_id']}.tflite"
        assert found["integer_only"]["integer_only"] is not _float_tensors_inside(path), v["name"]
    assert _variant(report, "int8")["deployability"]["integer_only"]["integer_only"] is True
    float32 = _variant(report, "float32")["deployability"]["integer_only"]
    assert float32["integer_only"] is False and float32["blockers"]


def _plans(path: Path, arena: int) -> bool:
    """Whether TFLite-Micro plans the model within `arena` bytes (in a child: it can abort)."""
    code = (
        "import sys\n"
        "from tflite_micro.python.tflite_micro import runtime\n"
        f"runtime.Interpreter.from_bytes(open({str(path)!r}, 'rb').read(), arena_size={arena})\n"
    )
    return (
        subprocess.run([sys.executable, "-c", code], capture_output=True, check=False).returncode
        == 0
    )


def test_tflite_micro_arena_is_the_smallest_that_plans(run) -> None:  # type: ignore[no-untyped-def]
    _, report, folder = run
    cell = _variant(report, "int8")["deployability"]["micro"]
    assert cell["status"] == "ok", cell
    arena = cell["arena_bytes"]
    path = folder / f"{_variant(report, 'int8')['file_id']}.tflite"
    assert _plans(path, arena)
    assert not _plans(path, arena - 512)


def test_vela_split_matches_the_vela_cli_run_here(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The split in the model's own ops: Vela's CPU list (run here) matched to the op outputs
    LiteRT's interpreter lists; SRAM from Vela's printed summary."""
    from ai_edge_litert.interpreter import Interpreter

    _, report, folder = run
    entry = _variant(report, "int8")
    cell = entry["deployability"]["vela"]
    assert cell["status"] == "ok", cell
    path = folder / f"{entry['file_id']}.tflite"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ethosu.vela",
            str(path),
            "--accelerator-config",
            "ethos-u55-128",
            "--output-dir",
            str(tmp_path),
            "--show-cpu-operations",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    cpu_tensors = set(re.findall(r"CPU: \S+ = (.+?) \(outputs", done.stdout))
    it = Interpreter(model_path=str(path))
    names = {t["index"]: t["name"] for t in it.get_tensor_details()}
    ops = it._get_ops_details()
    on_cpu = [op for op in ops if {names[i] for i in op["outputs"]} & cpu_tensors]
    assert (cell["npu_ops"], cell["cpu_ops"]) == (len(ops) - len(on_cpu), len(on_cpu))
    assert cell["npu_ops"] > 0
    sram_kib = float(re.search(r"Total SRAM used\s+([\d.]+) KiB", done.stdout).group(1))  # type: ignore[union-attr]
    assert abs(cell["sram_bytes"] / 1024 - sram_kib) < 0.01
    assert cell["cycles"] > 0


def test_cells_that_cannot_be_computed_say_why(run) -> None:  # type: ignore[no-untyped-def]
    _, report, _ = run
    # float32 and dynamic range compute in float: neither TFLite-Micro nor Vela is run.
    for name in ("float32", "dynamic"):
        for tool in ("vela", "micro"):
            cell = _variant(report, name)["deployability"][tool]
            assert cell["status"] == str(CellStatus.NOT_APPLICABLE)
            assert cell["reason"] == NO_INTEGER_OPS


def test_missing_extras_say_how_to_install_them(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(micro, "installed", lambda: False)
    monkeypatch.setattr(vela, "installed", lambda: False)
    model = tmp_path / "m.tflite"
    model.write_bytes(b"")
    assert micro.micro_check(model).reason == micro.INSTALL_HINT
    assert vela.vela_check(model).reason == vela.INSTALL_HINT
    assert "pip install --pre tflite-micro" in micro.INSTALL_HINT
    assert "pip install ethos-u-vela" in vela.INSTALL_HINT


def test_finish_stores_a_pick_per_target_and_the_cli_prints_the_preflight(run) -> None:  # type: ignore[no-untyped-def]
    from core.reporting.html import render_report_html

    done, report, folder = run
    every = report["recommendations"]
    assert list(every) == ["cpu", "integer-only", "mcu", "gpu"]
    assert report["recommendation"]["target"] == "integer-only"  # the run's --target
    assert report["options"]["target"] == "integer-only"
    assert report["options"]["arena_kb"] == 512
    assert "--target integer-only --arena-kb 512" in report["run"]["command"]
    excluded = {e["variant"] for e in every["integer-only"]["excluded"]}
    assert {"float32", "dynamic"} <= excluded
    assert every["gpu"]["variant"] is None
    # int8 is integer-only and passes at 50 %: the integer-only pick (float32 and dynamic are
    # excluded, and nothing else remains).
    assert _variant(report, "int8")["passed"] is True
    assert every["integer-only"]["variant"] == "int8"
    assert "deployability: int8: integer-only yes" in done.stdout
    vela_cell = _variant(report, "int8")["deployability"]["vela"]
    html = render_report_html(folder)
    assert '<table id="deployability">' in html and '<table id="targets">' in html
    assert f"<td>{vela_cell['npu_ops']} / {vela_cell['cpu_ops']}" in html


def test_an_op_tflite_micro_lacks_is_named(tmp_path: Path) -> None:
    """A real model with TOPK_V2, which TFLite-Micro has no kernel for."""
    import tensorflow as tf

    class TopK(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 10], tf.float32)])
        def f(self, x: tf.Tensor) -> tf.Tensor:
            values, _ = tf.math.top_k(x, k=3)
            return values

    module = TopK()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.f.get_concrete_function()], module
    )
    model = tmp_path / "topk.tflite"
    model.write_bytes(converter.convert())
    cell = micro.micro_check(model)
    assert (cell.status, cell.missing_op) == (CellStatus.FAILS, "TOPK_V2")
    assert (
        cell.reason == "TFLite-Micro has no kernel for TOPK_V2 (it names only the first missing op)"
    )


def test_flip_hunt_matches_an_independent_recomputation(run) -> None:  # type: ignore[no-untyped-def]
    """Brightness +10 % on int8, recomputed here: the images decoded again, scaled by 1.1 with
    numpy, the original through Keras and int8 through LiteRT's interpreter directly."""
    import csv

    import keras
    from ai_edge_litert.interpreter import Interpreter

    from core.inputs.images import decode_image

    done, report, folder = run
    with (folder / "samples.csv").open(encoding="utf-8") as f:
        relpaths = [r["relpath"] for r in csv.DictReader(f)]
    data_root = rundir.dataset_root(report["dataset"])
    assert data_root is not None
    pixels = np.stack(
        [decode_image(data_root / rel, height=16, width=16, channels=3) for rel in relpaths]
    )
    bright = np.clip(np.rint(pixels.astype(np.float64) * 1.1), 0, 255).astype(np.uint8)
    model = keras.models.load_model(report["reference"]["path"])

    def original(images: np.ndarray) -> np.ndarray:
        return np.argmax(model.predict(images.astype(np.float32) / 255.0, verbose=0), axis=1)

    entry = _variant(report, "int8")
    it = Interpreter(model_path=str(folder / f"{entry['file_id']}.tflite"))
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    scale, zero = inp["quantization"]

    def int8(images: np.ndarray) -> np.ndarray:
        answers = []
        for image in images.astype(np.float32) / 255.0:
            q = np.clip(np.rint(image / scale + zero), -128, 127).astype(np.int8)
            it.set_tensor(inp["index"], q[None])
            it.invoke()
            answers.append(int(np.argmax(it.get_tensor(out["index"])[0])))
        return np.array(answers)

    clean_ref, clean_int8 = original(pixels), int8(pixels)
    ref, var = original(bright), int8(bright)
    kept = ref == clean_ref
    row = next(p for p in entry["flip_hunt"] if p["perturbation"] == "brightness +10 %")
    assert row["n"] == len(relpaths)
    assert row["original_changed"] == int((~kept).sum())
    assert row["counted"] == int(kept.sum())
    assert row["agreeing"] == int((kept & (var == ref)).sum())
    assert row["new_flips"] == int((kept & (clean_int8 == clean_ref) & (var != ref)).sum())
    assert [p["perturbation"] for p in entry["flip_hunt"]][:2] == [
        "brightness +10 %",
        "brightness -10 %",
    ]
    with (folder / "samples.csv").open(encoding="utf-8") as f:
        indices = [int(r["index"]) for r in csv.DictReader(f)]
    with (folder / f"{entry['file_id']}.flip-hunt.csv").open(encoding="utf-8") as f:
        hunted = list(csv.DictReader(f))
    # Each new flip's data set index (what the gallery filters by) is its row's, and the rows
    # under brightness +10 % are exactly the ones recomputed here.
    assert all(int(r["index"]) == indices[int(r["row"])] for r in hunted)
    new = np.flatnonzero(kept & (clean_int8 == clean_ref) & (var != ref))
    assert [int(r["row"]) for r in hunted if r["perturbation"] == "brightness +10 %"] == list(new)
    assert "flip hunt: int8: brightness +10 %:" in done.stdout
