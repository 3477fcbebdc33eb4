"""Per-layer error as Model Explorer node data (issue 12 item 6): the file is read back with the
`ai-edge-model-explorer` package's own types, and its keys are the output tensor names its own
TFLite adapter gives the ops of the variant's `.tflite`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dacite import from_dict
from model_explorer.node_data_builder import GraphNodeData

from core.reporting.model_explorer import node_data, node_data_json
from tests.core.test_autofix import build_outlier_model
from tests.core.test_cli import run_cli
from tests.core.test_selective import _write_images

ROWS = [
    {"order": "0", "layer": "conv", "rmse_per_scale": "0.2", "flipped_rmse_per_scale": "1.5",
     "cosine": "", "flipped_cosine": "", "tensor_name": "m/conv_1/Relu;m/conv_1/convolution"},
    {"order": "1", "layer": "dense", "rmse_per_scale": "0.4", "flipped_rmse_per_scale": "",
     "cosine": "", "flipped_cosine": "", "tensor_name": "m/dense_1/MatMul"},
    {"order": "2", "layer": "(model output)", "rmse_per_scale": "0.3",
     "flipped_rmse_per_scale": "0.35", "cosine": "", "flipped_cosine": "",
     "tensor_name": "StatefulPartitionedCall_1:0"},
]  # fmt: skip


def test_node_data_uses_the_flipped_images_error_and_reads_as_graph_node_data() -> None:
    diagnosis = {"ranked_by": "rmse/scale", "flipped_images": 3}
    parsed = from_dict(GraphNodeData, json.loads(node_data_json("int8", ROWS, diagnosis)))
    # The op without a flipped-image statistic is left out, not shown as 0.
    assert {k: v.value for k, v in parsed.results.items()} == {
        "m/conv_1/Relu;m/conv_1/convolution": 1.5,
        "StatefulPartitionedCall_1:0": 0.35,
    }
    assert parsed.name == "QuantLens int8: rmse/scale on the flipped images"
    assert [g.stop for g in parsed.gradient] == [0, 0.5, 1]


def test_node_data_falls_back_to_calibration_when_nothing_flipped() -> None:
    data = node_data("int8_q", ROWS, {"ranked_by": "1 - cosine", "flipped_images": 0})
    assert data["results"] == {}  # no cosine in these rows: nothing to colour
    rows = [{**ROWS[0], "cosine": "0.75"}]
    data = node_data("int8_q", rows, {"ranked_by": "1 - cosine", "flipped_images": 0})
    assert data["results"] == {"m/conv_1/Relu;m/conv_1/convolution": {"value": 0.25}}
    assert data["name"] == "QuantLens int8_q: 1 - cosine on the calibration images"


@pytest.mark.slow
def test_export_model_explorer_keys_match_the_adapters_nodes(tmp_path: Path) -> None:
    from model_explorer.builtin_tflite_flatbuffer_adapter import BuiltinTfliteFlatbufferAdapter

    model = build_outlier_model(tmp_path / "outlier")
    data = _write_images(tmp_path / "data")
    out = tmp_path / "out"
    done = run_cli(
        "run", str(model), "--data", str(data), "--modes", "int8", "--preprocess", "unit",
        "--latency-runs", "3", "--out", str(out), "--export", "model-explorer", home=tmp_path,
    )  # fmt: skip
    exported = out / "int8.model-explorer.json"
    assert f"model explorer node data: {exported}" in done.stdout, done.stderr
    parsed = from_dict(GraphNodeData, json.loads(exported.read_text()))
    graphs = BuiltinTfliteFlatbufferAdapter().convert(str(out / "int8.tflite"), {})
    (graph,) = graphs["graphCollections"][0].graphs
    tensor_names = {
        attr["value"]
        for node in graph["nodes"]
        for meta in node.get("outputsMetadata", [])
        for attr in meta["attrs"]
        if attr["key"] == "tensor_name"
    }
    # Every op of the table is a node Model Explorer can colour, each value as in the table.
    with (out / "int8.layers.csv").open() as f:
        import csv

        table = list(csv.DictReader(f))
    assert set(parsed.results) <= tensor_names
    flipped = json.loads((out / "report.json").read_text())["variants"]
    int8 = next(v for v in flipped if v["name"] == "int8")
    column = "flipped_rmse_per_scale" if int8["diagnosis"]["flipped_images"] else "rmse_per_scale"
    assert {k: v.value for k, v in parsed.results.items()} == {
        r["tensor_name"]: float(r[column]) for r in table if r[column]
    }
    assert len(parsed.results) == 4  # wide, mix, pool and the head
    # A finished run exports the same file again through `export`.
    exported.unlink()
    again = run_cli("export", str(out), home=tmp_path)
    assert again.returncode == 0 and exported.is_file(), again.stderr
