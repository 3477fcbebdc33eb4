"""Run comparison: labels stay unique, differing settings are marked, numbers pass through."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from core.errors import QuantLensError
from core.reporting import figures
from core.reporting.run_compare import (
    compared_items,
    latency_percentiles,
    sizes_bytes,
    summary_rows,
    threshold_pct,
    unique_labels,
    what_changed,
)


def _report(
    *, mode: str = "float16", calibration: int = 100, agreement: float = 99.5, sha: str = "a" * 64
) -> dict[str, Any]:
    return {
        "run": {"id": "r1", "name": "run"},
        "reference": {"path": "/m/saved_model", "sha256": sha, "format": "saved_model"},
        "dataset": {"path": "/d", "num_samples": 200, "num_skipped": 0},
        "preprocessing": {
            "preset": "mobilenet_v2",
            "height": 32,
            "width": 32,
            "channels": 3,
            "value_range": [-1.0, 1.0],
        },
        "options": {"calibration_samples": calibration, "threads": None, "min_agreement_pct": 95.0},
        "environment": {"tensorflow": "2.21.0", "litert": "2.3.0", "cpu": "x86", "threads": 2},
        "variants": [
            {
                "name": mode,
                "mode": mode,
                "io_type": "int8" if mode == "int8" else None,
                "allow_select_tf_ops": False,
                "status": "done",
                "size_bytes": 40_000 if mode == "int8" else 80_000,
                "size_reduction_pct": 90.0,
                "n": 200,
                "top1_agreement_pct": agreement,
                "top1_agreement_ci95": [agreement - 2.0, min(100.0, agreement + 0.4)],
                "topk_agreement_pct": 100.0,
                "k": 5,
                "disagreements": round(200 * (100 - agreement) / 100),
                "reference_accuracy_pct": 97.0,
                "tflite_accuracy_pct": 96.5,
                "latency_ms": {"p50": 1.5, "p90": 2.0, "p99": 3.25, "max": 3.5, "n": 50},
            },
            {"name": "int16x8", "mode": "int16x8", "status": "crashed", "size_bytes": None},
        ],
    }


def test_unique_labels_add_the_run_id_only_for_clashing_names() -> None:
    labels = unique_labels([("r1", "A", "int8"), ("r2", "A", "int8"), ("r3", "B", "int8")])
    assert labels == ["A · int8 [r1]", "A · int8 [r2]", "B · int8"]
    assert unique_labels([("r1", "", "float16")]) == ["unnamed run · float16"]


def test_what_changed_marks_mode_and_calibration_and_nothing_else() -> None:
    a = _report(mode="float16", calibration=100)
    b = _report(mode="int8", calibration=50)
    items = compared_items([("r1", "A", "float16", a), ("r2", "B", "int8", b)])
    rows = {r.field: r for r in what_changed(items)}
    assert {f for f, r in rows.items() if r.differs} == {"mode", "I/O type", "calibration samples"}
    assert rows["mode"].values == ("float16", "int8")
    # the count float16 never reads is shown, but flagged as unused
    assert rows["calibration samples"].values == ("100 (unused by float16)", "50")
    assert rows["model sha256"].differs is False
    assert rows["threads"].values == ("2", "2")  # options say "all"; the environment says how many
    only = what_changed(items, only_changed=True)
    assert [r.field for r in only] == ["mode", "I/O type", "calibration samples"]


def test_what_changed_sees_a_new_model_hash_and_library_version() -> None:
    a = _report()
    b = copy.deepcopy(a)
    b["reference"]["sha256"] = "b" * 64
    b["environment"]["tensorflow"] = "2.20.0"
    items = compared_items([("r1", "A", "float16", a), ("r2", "B", "float16", b)])
    changed = [r.field for r in what_changed(items) if r.differs]
    assert changed == ["model sha256", "tensorflow"]


def test_same_run_two_variants_differ_only_in_variant_fields() -> None:
    rep = _report(mode="int8")
    rep["variants"][1].update(io_type=None, allow_select_tf_ops=False)
    items = compared_items([("r1", "A", "int8", rep), ("r1", "A", "int16x8", rep)])
    changed = {r.field for r in what_changed(items) if r.differs}
    assert changed == {"mode", "I/O type"}


def test_what_changed_names_the_backend_and_the_kept_layers() -> None:
    """int8 against int8_q:keep=dense differ in backend and kept layers only; a report from
    before the quantizer backend (no `backend`) reads as the converter's."""
    old = _report(mode="int8")
    new = copy.deepcopy(old)
    new["variants"][0].update(
        name="int8_q:keep=dense", backend="quantizer", float_layers=["dense"], int16_layers=[]
    )
    items = compared_items([("r1", "A", "int8", old), ("r2", "B", "int8_q:keep=dense", new)])
    rows = {r.field: r for r in what_changed(items)}
    assert {f for f, r in rows.items() if r.differs} == {"backend", "layers kept in float"}
    assert rows["backend"].values == ("converter", "quantizer")
    assert rows["layers kept in float"].values == ("none", "dense")
    assert rows["layers with int16 activations"].values == ("none", "none")


def test_unknown_variant_is_a_one_line_error() -> None:
    with pytest.raises(QuantLensError, match="has no variant 'int8'; pick one of float16"):
        compared_items([("r1", "A", "int8", _report())])


def test_summary_rows_carry_the_report_numbers() -> None:
    a, b = _report(agreement=99.5), _report(mode="int8", agreement=91.0)
    items = compared_items([("r1", "A", "float16", a), ("r2", "B", "int8", b)])
    rows = summary_rows(items)
    assert [r["run · variant"] for r in rows] == ["A · float16", "B · int8"]
    assert [r["top-1 agreement (%)"] for r in rows] == [
        99.5,
        91.0,
    ]
    assert rows[1]["CI low (%)"] == 89.0 and rows[1]["CI high (%)"] == 91.4
    assert rows[1]["size (MB)"] == pytest.approx(0.04)
    assert rows[1]["disagreements"] == 18
    # 50 runs: no p99 is quoted, the max is.
    assert rows[0]["p99 (ms)"] is None and rows[0]["max (ms)"] == 3.5


def test_a_crashed_variant_has_no_numbers_and_no_chart_entries() -> None:
    rep = _report()
    items = compared_items([("r1", "A", "float16", rep), ("r1", "A", "int16x8", rep)])
    row = summary_rows(items)[1]
    assert row["status"] == "crashed"
    assert row["top-1 agreement (%)"] is None and row["size (MB)"] is None
    assert sizes_bytes(items) == {"A · float16": 80_000}
    assert latency_percentiles(items) == {
        "A · float16": {"p50": 1.5, "p90": 2.0, "p99": 3.25, "max": 3.5, "n": 50}
    }


def test_chart_inputs_feed_the_shared_figure_builders() -> None:
    a, b = _report(agreement=99.5), _report(mode="int8", agreement=91.0)
    b["options"]["min_agreement_pct"] = 97.0
    items = compared_items([("r1", "A", "float16", a), ("r2", "B", "int8", b)])
    assert threshold_pct(items) == 97.0  # the stricter run's bar
    size = figures.size_figure(sizes_bytes(items))
    assert list(size.data[0].x) == ["A · float16", "B · int8"]
    assert list(size.data[0].y) == pytest.approx([0.08, 0.04])
    lat = figures.latency_percentiles_figure(latency_percentiles(items))
    assert [t.name for t in lat.data] == ["p50", "p90", "tail"]
    assert list(lat.data[2].y) == [3.5, 3.5] and list(lat.data[2].text) == ["max", "max"]


def test_what_changed_names_where_the_calibration_images_came_from() -> None:
    a = _report(mode="int8")
    b = copy.deepcopy(a)
    a["calibration"] = {"source": "overlapping", "images": 100}
    b["calibration"] = {"source": "held-out", "images": 100}
    items = compared_items([("r1", "A", "int8", a), ("r2", "B", "int8", b)])
    rows = {r.field: r for r in what_changed(items)}
    assert rows["calibration images from"].differs
    assert rows["calibration images from"].values == ("overlapping", "held-out")
