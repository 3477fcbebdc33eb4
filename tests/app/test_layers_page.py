"""The Layers page against a hand-built run with a per-layer table, a diagnosis and an auto-fix
path: what the user reads matches the files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from core.inputs import rundir
from tests.app.conftest import OpenPage
from tests.app.fixtures import build_run, read_report

LAYERS_CSV = """order,layer,layers,op,shape,scale,zero_point,rmse_per_scale,mean_error,max_abs_error,cosine,flipped_rmse_per_scale,flipped_mean_error,flipped_max_abs_error,flipped_cosine,tensor_name
0,conv2d,re_lu+conv2d,CONV_2D,1x16x16x24,0.0046,-128,0.29,0,0.006,,0.31,0,0.006,,m/re_lu_1/Relu6;m/conv2d_1/convolution
1,depthwise_conv2d,depthwise_conv2d,DEPTHWISE_CONV_2D,1x16x16x24,0.0011,-128,0.21,0,0.001,,1.42,0,0.004,,m/depthwise_conv2d_1/depthwise
2,dense,dense,FULLY_CONNECTED,1x64,0.00006,-128,0.41,0,0.0001,,0.40,0,0.0001,,m/dense_1/MatMul
3,(model output),,SOFTMAX,1x4,0.0039,-128,0.34,0,0.0017,,0.35,0,0.0017,,StatefulPartitionedCall_1:0
"""


def _diagnosed_run(home: Path, *, derived: str = "int8:keep=dense") -> Path:
    run_dir = build_run(home, flips={"float16": 0, "int8": 6})
    report = read_report(run_dir)
    int8 = next(v for v in report["variants"] if v["name"] == "int8")
    int8["diagnosis"] = {
        "source": "quantization debugger (per op, fed the quantized input)",
        "calibration_images": 40,
        "flipped_images": 6,
        "ranked_by": "rmse/scale",
        "suspects": [{"layer": "depthwise_conv2d", "op": "DEPTHWISE_CONV_2D", "order": 1}],
        "table": "int8.layers.csv",
    }
    int8["auto_fix"] = {
        "scan_images": 40,
        "sensitivity": [
            {"layer": "dense", "stat_rank": 2, "agreement_pct": 95.0, "mean_kl": 0.01},
            {"layer": "depthwise_conv2d", "stat_rank": 1, "agreement_pct": 87.5, "mean_kl": 0.03},
        ],
        "steps": [
            {
                "layers": ["dense"],
                "agreement_pct": 95.0,
                "mean_kl": 0.01,
                "size_bytes": int8["size_bytes"] + 9000,
                "n": 40,
                "meets_threshold": True,
            }
        ],
        "variant": derived,
    }
    (run_dir / "int8.layers.csv").write_text(LAYERS_CSV, encoding="utf-8")
    (run_dir / rundir.REPORT).write_text(json.dumps(report), encoding="utf-8")
    return run_dir


def test_layers_page_shows_depth_chart_both_rankings_and_the_path(
    home: Path, open_page: OpenPage
) -> None:
    run_dir = _diagnosed_run(home)
    at = open_page("layers")
    assert at.selectbox(key="layers.variant").options == ["int8"]  # float16 has no diagnosis
    charts = at.get("plotly_chart")
    assert len(charts) == 2  # error along depth, and the auto-fix path
    depth = json.loads(charts[0].proto.spec)
    traces = {t["name"]: t for t in depth["data"]}
    assert traces["calibration images"]["y"] == [0.29, 0.21, 0.41, 0.34]
    assert traces["flipped images"]["y"] == [0.31, 1.42, 0.40, 0.35]
    assert traces["suspect"]["x"] == [1]  # the suspect is ringed at its depth
    assert depth["layout"]["xaxis"]["title"]["text"] == "op order in the model (input → output)"
    table = at.dataframe[0].value
    # Ranked by the flipped images' rmse/scale: the depthwise conv first, the softmax row ranked too.
    assert list(table["layer"]) == ["depthwise_conv2d", "dense", "(model output)", "conv2d"]
    assert list(table["rank by statistics"]) == [1, 2, 3, 4]
    measured = dict(zip(table["layer"], table["rank measured"], strict=True))
    assert measured["dense"] == 1 and measured["depthwise_conv2d"] == 2
    path = json.loads(charts[1].proto.spec)
    agreement = next(t for t in path["data"] if t["name"] == "top-1 agreement")
    assert agreement["x"] == [0, 1]
    parent = next(v for v in read_report(run_dir)["variants"] if v["name"] == "int8")
    assert agreement["y"] == [parent["top1_agreement_pct"], 95.0]
    text = " ".join(m.value for m in at.markdown) + " ".join(c.value for c in at.caption)
    assert "the auto-fix proposal uses the measured ranking" in text
    assert "1 layer in float, 95.00 % agreement on 40 images (meets the 95 % bar)" in text
    assert r"Derived as **int8\:keep=dense**." in text  # ":" escaped for markdown


def test_the_keep_float_path_is_not_credited_to_a_rung_the_search_chose_instead(
    home: Path, open_page: OpenPage
) -> None:
    """The path charts the keep-float rung alone: when the search chose equalization, the
    sentence under it names the path's layers and the chosen rung, never "int8:eq: 1 layer in
    float"."""
    _diagnosed_run(home, derived="int8:eq")
    at = open_page("layers")
    text = " ".join(m.value for m in at.markdown)
    assert "**Keep in float** (dense): 1 layer in float, 95.00 % agreement on 40 images" in text
    assert r"The search chose **int8\:eq**, a rung of the ladder above." in text
    assert r"**int8\:eq**: 1 layer" not in text


def test_layers_page_explains_a_run_without_diagnosis(home: Path, open_page: OpenPage) -> None:
    build_run(home, flips={"float16": 0, "int8": 6})
    at = open_page("layers")
    assert not at.get("plotly_chart")
    assert any("No per-layer diagnosis in this run" in i.value for i in at.info)


def test_rescore_button_adds_the_derived_variant_and_queues_the_run(
    home: Path, open_page: OpenPage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The button writes the pending derived variant into the run and starts its job; the
    supervisor itself is not started here (tests/core/test_rescore.py runs the real job)."""
    from core.jobs import launch

    run_dir = _diagnosed_run(home)
    started: list[str] = []
    monkeypatch.setattr(launch, "launch_run", lambda run_id, **_: started.append(run_id))
    at = open_page("layers")
    keep = at.multiselect(key="layers.keep_float.int8")
    # The Keras layers of the table, most suspect first; the model output is not a layer.
    assert keep.options == ["depthwise_conv2d", "dense", "conv2d", "re_lu"]
    keep.set_value(["dense", "conv2d"])
    at.button(key="layers.rescore").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert started == ["run-fixture"]
    entry = next(
        v for v in read_report(run_dir)["variants"] if v["name"] == "int8:keep=conv2d+dense"
    )
    assert entry["parent"] == "int8" and entry["float_layers"] == ["conv2d", "dense"]
    assert entry["status"] == "pending" and entry["derived_by"] == "re-score"
    status = rundir.read_json(run_dir / rundir.STATUS)
    assert status["status"] == "queued" and status["rescore"]["previous_status"] == "done"
    assert not at.error


def test_a_variant_waiting_for_its_diagnosis_is_offered_and_the_button_queues_the_run(
    home: Path, open_page: OpenPage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """float16 flipped no image, so its run left it undiagnosed: the page says so and its button
    asks for the diagnosis (tests/core/test_diagnose_on_request.py runs the real job)."""
    from core.jobs import launch
    from core.reporting.report import DIAGNOSIS_ON_REQUEST, ON_REQUEST_ASKED, ON_REQUEST_WAITING

    run_dir = _diagnosed_run(home)
    report = read_report(run_dir)
    float16 = next(v for v in report["variants"] if v["name"] == "float16")
    float16[DIAGNOSIS_ON_REQUEST] = ON_REQUEST_WAITING
    (run_dir / rundir.REPORT).write_text(json.dumps(report), encoding="utf-8")
    started: list[str] = []
    monkeypatch.setattr(launch, "launch_run", lambda run_id, **_: started.append(run_id))
    at = open_page("layers")
    assert any("float16 flipped no image" in i.value for i in at.info), [i.value for i in at.info]
    assert at.selectbox(key="layers.variant").options == ["int8"]  # the diagnosed one, as before
    at.button(key="layers.diagnose").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert started == ["run-fixture"]
    entry = next(v for v in read_report(run_dir)["variants"] if v["name"] == "float16")
    assert entry[DIAGNOSIS_ON_REQUEST] == ON_REQUEST_ASKED
    status = rundir.read_json(run_dir / rundir.STATUS)
    assert status["status"] == "queued" and status["rescore"]["previous_status"] == "done"
    assert status["rescore"]["doing"] == "diagnosing float16"
    assert not at.error


def test_rescore_errors_are_one_line_on_the_page(
    home: Path, open_page: OpenPage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.jobs import launch

    run_dir = _diagnosed_run(home)
    monkeypatch.setattr(launch, "launch_run", lambda run_id, **_: None)
    before = read_report(run_dir)
    at = open_page("layers")
    at.button(key="layers.rescore").click()  # nothing chosen
    at.run()
    assert [e.value for e in at.error] == [
        "no layer chosen; pick at least one layer to keep in float"
    ]
    status = rundir.read_json(run_dir / rundir.STATUS)
    rundir.write_json_atomic(run_dir / rundir.STATUS, {**status, "status": "running"})
    at.multiselect(key="layers.keep_float.int8").set_value(["dense"])
    at.button(key="layers.rescore").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert [e.value for e in at.error] == [
        "the run is still running; re-score it once it has finished (or cancel it)"
    ]
    assert read_report(run_dir)["variants"] == before["variants"]  # nothing was added


def test_layers_page_offers_model_explorer_node_data(home: Path, open_page: OpenPage) -> None:
    run_dir = _diagnosed_run(home)
    report = read_report(run_dir)
    int8 = next(v for v in report["variants"] if v["name"] == "int8")
    int8["diagnosis"]["flipped_images"] = 1
    (run_dir / rundir.REPORT).write_text(json.dumps(report), encoding="utf-8")
    at = open_page("layers")
    (_button,) = [
        b for b in at.get("download_button") if b.proto.label == "Model Explorer node data"
    ]
    captions = " ".join(c.value for c in at.caption)
    assert "Model Explorer" in captions and "green (low) to red (high)" in captions
    text = " ".join(c.value for c in at.caption)
    assert "40 calibration images and 1 image this variant flipped" in text


def _with_details(run_dir: Path) -> dict:  # type: ignore[type-arg]
    """A layer_details.json for the fixture's int8 (as core.engine.layer_details writes it)."""
    details = {
        "images": "flipped",
        "n_images": 6,
        "ops": {
            "1": {
                "tensor_name": "m/depthwise_conv2d_1/depthwise",
                "weight_min": -0.75,
                "weight_max": 1.25,
                "histogram": {
                    "edges": [0.0, 0.5, 1.0, 1.5],
                    "float": [10, 20, 6],
                    "quantized": [12, 0, 24],
                    "values": 36,
                },
            },
            "0": {
                "tensor_name": "x",
                "weight_min": None,
                "weight_max": None,
                "histogram": None,
            },
        },
    }
    (run_dir / "int8.layer_details.json").write_text(json.dumps(details), encoding="utf-8")
    report = read_report(run_dir)
    int8 = next(v for v in report["variants"] if v["name"] == "int8")
    int8["diagnosis"]["details"] = "int8.layer_details.json"
    (run_dir / rundir.REPORT).write_text(json.dumps(report), encoding="utf-8")
    return details


def test_layer_details_show_scale_weights_and_both_histograms(
    home: Path, open_page: OpenPage
) -> None:
    run_dir = _diagnosed_run(home)
    _with_details(run_dir)
    at = open_page("layers")
    # The most suspect op is shown first: the depthwise conv (order 1).
    detail = at.selectbox(key="layers.detail.int8")
    assert detail.value == "1"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Scale (output)"] == "0.0011"
    assert metrics["Zero point (output)"] == "-128"
    assert metrics["Weight range"] == "-0.75 … 1.25"
    histogram = json.loads(at.get("plotly_chart")[2].proto.spec)
    bars = {t["name"]: t for t in histogram["data"]}
    assert bars["float32 model"]["y"] == [10, 20, 6]
    assert bars["quantized model"]["y"] == [12, 0, 24]
    assert bars["float32 model"]["x"] == [0.25, 0.75, 1.25]
    layout = histogram["layout"]
    assert layout["barmode"] == "overlay"
    assert layout["xaxis"]["title"]["text"] == "activation value (float units, dequantized)"
    assert layout["yaxis"]["title"]["text"] == "count of values (log scale)"
    assert layout["yaxis"]["type"] == "log"
    assert "on 6 flipped images (n = 36 values per model)" in layout["title"]["text"]
    # An op without weights or a float tensor says so instead of drawing zeros.
    detail.set_value("0").run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Weight range"] == "no weights"
    assert any("the float32 model has no tensor of its name" in i.value for i in at.info)
    assert len(at.get("plotly_chart")) == 2


def test_layer_details_missing_from_an_older_run_are_explained(
    home: Path, open_page: OpenPage
) -> None:
    _diagnosed_run(home)
    at = open_page("layers")
    assert any("This run has no layer details" in i.value for i in at.info)


def test_cancelling_a_queued_rescore_gives_the_run_back(
    home: Path, open_page: OpenPage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancel on the Layers page while the re-score waits: no supervisor ever started, the run
    is `done` again and the new variant says it was cancelled."""
    from core.jobs import launch

    run_dir = _diagnosed_run(home)
    monkeypatch.setattr(launch, "launch_run", lambda run_id, **_: None)
    at = open_page("layers")
    at.multiselect(key="layers.keep_float.int8").set_value(["dense"])
    at.button(key="layers.rescore").click()
    at.run()
    at.button(key="layers.cancel").click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    status = rundir.read_json(run_dir / rundir.STATUS)
    assert status["status"] == "done"
    assert status["error"] == ("re-scoring int8:keep=dense cancelled: cancelled before it started")
    report = read_report(run_dir)
    assert report["run"]["status"] == "done"
    derived = next(v for v in report["variants"] if v["name"] == "int8:keep=dense")
    assert derived["status"] == "cancelled" and derived["error"] == "cancelled before it started"


def test_ranked_table_cells_without_a_value_read_a_dash(home: Path, open_page: OpenPage) -> None:
    """A layer the sensitivity scan did not measure has no measured rank, KL or agreement: the
    grid draws its placeholder there ("—", as every other table), never the text "None"."""
    import math

    _diagnosed_run(home)
    at = open_page("layers")
    frame = at.dataframe[0]
    assert frame.proto.placeholder == "—"
    table = frame.value.set_index("layer")
    for layer in ("conv2d", "(model output)"):  # not among the scan's measured layers
        for column in ("rank measured", "mean KL, layer in float", "agreement %, layer in float"):
            cell = table.loc[layer, column]
            assert cell is None or math.isnan(cell), (layer, column, cell)
    assert table.loc["dense", "rank measured"] == 1
    # Numbers stay numbers (sortable in the grid): the zero point is -128, not the text "-128".
    assert table.loc["dense", "zero point"] == -128 and table.loc["dense", "scale"] == 0.00006
