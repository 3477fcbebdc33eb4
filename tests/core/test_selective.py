"""Selective variants on the converter backend (issue 12): `int8:keep=LAYER` keeps exactly the
named layers' ops in float, read back from the `.tflite` op list and tensor types; the I/O types
follow the variant; `--keep-float` derives a variant per parent with `parent` and
`float_layers`, and its reported agreement is recomputed from its own `.tflite`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.engine.backends import tflite_from_reference
from core.engine.models import ReferenceModel, load_reference, model_sha256
from core.errors import ConversionFailed, QuantLensError
from core.types import VariantSpec
from tests.core.test_cli import run_cli
from tests.core.test_cli_quantizer import _inputs, _reference_probs, _tflite_probs


@pytest.fixture(scope="module")
def tiny_ref(tiny_models: dict[str, Path]) -> ReferenceModel:
    return load_reference(tiny_models["keras"])


@pytest.fixture(scope="module")
def calibration(tiny_data: Path) -> np.ndarray:
    from core.inputs.datasets import load_dataset
    from core.inputs.images import decode_image
    from core.inputs.presets import apply_preset
    from core.types import Preset

    samples = load_dataset(tiny_data).samples
    pixels = np.stack([decode_image(s.path, height=16, width=16, channels=3) for s in samples])
    return apply_preset(pixels, Preset.MOBILENET_V2).astype(np.float32)


def _convert(model: ReferenceModel, path: Path, variant: str, calibration: np.ndarray) -> Any:
    return tflite_from_reference(
        model, VariantSpec.parse(variant), model_sha256=model_sha256(path), calibration=calibration
    )


def _ops(tflite: bytes) -> list[tuple[str, str, list[str], str]]:
    """(op, output type, input types, output tensor name) per op, read from the flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    def names(cls: Any) -> dict[int, str]:
        return {v: k for k, v in vars(cls).items() if not k.startswith("_")}

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))
    graph = model.subgraphs[0]
    ops, types = names(schema.BuiltinOperator), names(schema.TensorType)
    rows = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        out = graph.tensors[op.outputs[0]]
        name = out.name.decode() if isinstance(out.name, bytes) else str(out.name)
        rows.append(
            (
                ops[max(code.builtinCode, code.deprecatedBuiltinCode)],
                types[out.type],
                [types[graph.tensors[i].type] for i in op.inputs if i >= 0],
                name,
            )
        )
    return rows


def _of(ops: Iterable[tuple[str, str, list[str], str]], op: str, scope: str) -> list[Any]:
    return [(out, ins) for name, out, ins, tensor in ops if name == op and f"/{scope}/" in tensor]


@pytest.mark.slow
def test_keep_float_leaves_exactly_the_named_ops_float(
    tiny_ref: ReferenceModel, tiny_models: dict[str, Path], calibration: np.ndarray
) -> None:
    path = tiny_models["keras"]
    plain = _ops(_convert(tiny_ref, path, "int8", calibration).tflite)
    kept = _ops(_convert(tiny_ref, path, "int8:keep=dense", calibration).tflite)
    # Keras 3 scopes: layer `dense` is dense_1, `conv2d_1` is conv2d_1_2.
    ((plain_out, plain_in),) = _of(plain, "FULLY_CONNECTED", "dense_1")
    assert plain_out == "INT8" and set(plain_in) <= {"INT8", "INT32"}
    # Kept: float activations in and out, and float weights.
    ((kept_out, kept_in),) = _of(kept, "FULLY_CONNECTED", "dense_1")
    assert kept_out == "FLOAT32" and set(kept_in) == {"FLOAT32"} and len(kept_in) >= 2
    # Everything else stays int8, with the quantize/dequantize pair around the float op.
    for op, scope in (("FULLY_CONNECTED", "scores_1"), ("CONV_2D", "conv2d_1_2")):
        assert [out for out, _ in _of(kept, op, scope)] == ["INT8"]
    assert [o[0] for o in kept].count("DEQUANTIZE") >= 1
    assert [o[0] for o in kept].count("QUANTIZE") >= 1
    assert "DEQUANTIZE" not in [o[0] for o in plain]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("variant", "io"), [("int8", "INT8"), ("int8-uint8", "UINT8"), ("int8-float32", "FLOAT32")]
)
def test_keep_float_keeps_the_parents_io_type_and_answers_like_the_original(
    tiny_ref: ReferenceModel,
    tiny_models: dict[str, Path],
    calibration: np.ndarray,
    variant: str,
    io: str,
) -> None:
    from ai_edge_litert.interpreter import Interpreter

    tflite = _convert(tiny_ref, tiny_models["keras"], f"{variant}:keep=conv2d_1", calibration)
    interpreter = Interpreter(model_content=tflite.tflite)
    interpreter.allocate_tensors()
    dtype = {"INT8": np.int8, "UINT8": np.uint8, "FLOAT32": np.float32}[io]
    assert interpreter.get_input_details()[0]["dtype"] == dtype
    assert interpreter.get_output_details()[0]["dtype"] == dtype
    assert [out for out, _ in _of(_ops(tflite.tflite), "CONV_2D", "conv2d_1_2")] == ["FLOAT32"]
    # The model runs in LiteRT and answers like the original within a few int8 steps.
    from core.engine.runtime import TFLiteRunner

    runner = TFLiteRunner(tflite.tflite)
    got = np.stack([runner.run(x) for x in calibration[:8]])
    np.testing.assert_allclose(got, tiny_ref.predict(calibration[:8]), atol=3 / 256)


@pytest.mark.slow
def test_unknown_layer_fails_that_variant_with_the_nearest_names(
    tiny_ref: ReferenceModel, tiny_models: dict[str, Path], calibration: np.ndarray
) -> None:
    with pytest.raises(ConversionFailed) as info:
        _convert(tiny_ref, tiny_models["keras"], "int8:keep=dens", calibration)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("int8:keep=dens: no op of the converted model comes from a layer")
    assert message.split("nearest layer names: ")[1].startswith("dense")


def test_keep_float_derives_a_variant_per_parent_that_can_keep() -> None:
    from core.options import with_keep_float

    derived = with_keep_float(("float16", "int8", "int8_q", "float32"), "dense, conv2d")
    assert derived == (
        "float16",
        "int8",
        "int8:keep=conv2d+dense",
        "int8_q",
        "int8_q:keep=conv2d+dense",
        "float32",
    )
    with pytest.raises(QuantLensError, match="--keep-float needs an int8 variant"):
        with_keep_float(("float16", "float32"), "dense")
    with pytest.raises(QuantLensError, match="--keep-float names no layer"):
        with_keep_float(("int8",), " , ")


def test_the_converter_keeps_float_only_in_int8() -> None:
    with pytest.raises(QuantLensError, match="only int8 keeps layers in float"):
        VariantSpec.parse("float16:keep=dense")
    with pytest.raises(QuantLensError, match="only int8 keeps layers in float"):
        VariantSpec.parse("int8:int16=dense")
    assert VariantSpec.parse("int8-uint8:keep=dense").name == "int8-uint8:keep=dense"


def test_parent_is_the_variant_without_its_overrides() -> None:
    from core.reporting.report import parent_name, pending_variant

    assert parent_name(VariantSpec.parse("int8-uint8:keep=b+a")) == "int8-uint8"
    assert parent_name(VariantSpec.parse("int8_q:int16=conv2d")) == "int8_q"
    assert parent_name(VariantSpec.parse("int8")) is None
    entry = pending_variant(VariantSpec.parse("int8_q:keep=dense"))
    assert entry["parent"] == "int8_q" and entry["float_layers"] == ["dense"]


@pytest.mark.slow
def test_cli_keep_float_reports_a_derived_variant_that_reproduces(
    tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    csv_path = _write_images(tmp_path / "data")
    out = tmp_path / "out"
    done = run_cli(
        "run",
        str(tiny_models["saved_model"]),
        "--data",
        str(csv_path),
        "--modes",
        "int8",
        "--keep-float",
        "dense",
        "--preprocess",
        "unit",
        "--min-agreement",
        "0",
        "--latency-runs",
        "3",
        "--out",
        str(out),
        home=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    by_name = {v["name"]: v for v in report["variants"]}
    assert list(by_name) == ["int8", "int8:keep=dense", "float32"]
    kept = by_name["int8:keep=dense"]
    assert kept["parent"] == "int8" and kept["float_layers"] == ["dense"]
    assert kept["status"] == "done" and kept["latency_ms"]["n"] == 3
    assert "parent" not in by_name["int8"]  # schema 2 writes `parent` only on a derived variant
    assert kept["file_id"].startswith("int8-k")  # its files are named by its short id
    for suffix in (".tflite", ".samples.csv", ".probs.npy", ".layers.csv"):
        assert (out / f"{kept['file_id']}{suffix}").is_file()
    # Its agreement, recomputed from its own .tflite with LiteRT and the original with TF.
    images = _inputs(csv_path)
    ref = _reference_probs(tiny_models["saved_model"], images).argmax(axis=1)
    for name in ("int8", "int8:keep=dense"):
        tfl = _tflite_probs(out / f"{by_name[name]['file_id']}.tflite", images).argmax(axis=1)
        assert by_name[name]["top1_agreement_pct"] == pytest.approx(100 * np.mean(ref == tfl))
    assert kept["size_bytes"] > by_name["int8"]["size_bytes"]  # dense's float weights
    assert "--modes int8,int8:keep=dense" in report["run"]["command"]


def _write_images(root: Path) -> Path:
    """24 unlabelled class-coloured 16x16 PNGs (the tiny model's size, so nothing is resized)."""
    from PIL import Image

    root.mkdir(parents=True)
    rng = np.random.default_rng(3)
    names = []
    for i in range(24):
        base = np.zeros((16, 16, 3))
        base[..., i % 3] = 150 + 70 * (i % 2)
        pixels = np.clip(base + rng.normal(0, 50, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
        names.append(f"{i}.png")
    (root / "data.csv").write_text("filepath\n" + "".join(f"{n}\n" for n in names))
    return root / "data.csv"
