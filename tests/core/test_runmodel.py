"""core.reporting.runmodel: report.json as typed objects, one writer and one reader.

`tests/fixtures/schema1_run/` is a real run written by QuantLens before the typed model
(`python -m core run` on the tiny test model, float32/dynamic/int8 on both backends); its
report.json is schema 1. Expected values here come from that JSON, never from the model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from core.errors import QuantLensError
from core.reporting.report import format_table, pending_variant
from core.reporting.runmodel import SCHEMA_VERSION, RunReport, read_report, write_report
from core.reporting.sections.variant import Variant, VariantIdentity, VariantResult
from core.types import Backend, IOType, Mode, VariantSpec

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "schema1_run"


def _raw() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURE / "report.json").read_text(encoding="utf-8"))
    return data


def _copy(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    return run


def _written(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    return data


def _sparse(dense: list[list[int]]) -> dict[str, Any]:
    cells = [[i, j, n] for i, row in enumerate(dense) for j, n in enumerate(row) if n != 0]
    return {"classes": len(dense), "cells": cells}


def test_the_fixture_is_a_schema_1_report() -> None:
    assert _raw()["schema_version"] == 1
    assert SCHEMA_VERSION == 3


def test_a_schema_1_report_opens_with_its_names_and_numbers(tmp_path: Path) -> None:
    raw = _raw()
    report = read_report(_copy(tmp_path))
    assert report.schema_version == 1
    assert report.run.id == raw["run"]["id"]
    assert [v.name for v in report.variants] == [v["name"] for v in raw["variants"]]
    for typed, entry in zip(report.variants, raw["variants"], strict=True):
        assert str(typed.identity.mode) == entry["mode"]
        assert str(typed.identity.backend) == entry["backend"]
        assert typed.result.top1_agreement_pct == entry["top1_agreement_pct"]
        assert list(typed.result.top1_agreement_ci95 or ()) == entry["top1_agreement_ci95"]
        assert typed.result.size_bytes == entry["size_bytes"]
        assert typed.result.p50_ms == entry["latency_ms"]["p50"]
    # schema 1 keeps the calibration in the run's options: every variant inherits it.
    int8 = report.variant("int8")
    assert int8 is not None
    assert report.calibration_of(int8) == (
        raw["options"]["calibration_samples"],
        raw["options"]["seed"],
    )


def test_rewriting_a_schema_1_report_changes_only_its_version(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    raw = _raw()
    write_report(run, read_report(run))
    out = _written(run)
    assert out.pop("schema_version") == 3
    raw.pop("schema_version")
    for new, old in zip(out["variants"], raw["variants"], strict=True):
        # Schema 3 keeps only the non-zero cells of the dense rows schema 1 wrote.
        dense = old["flip_matrix"]
        old["flip_matrix"] = None if dense is None else _sparse(dense)
        assert new["flip_matrix"] == old["flip_matrix"]
    assert any(v["flip_matrix"] and v["flip_matrix"]["cells"] for v in raw["variants"])
    assert out == raw  # same keys, same values
    assert list(out) == list(raw)  # and in the same order
    for new, old in zip(out["variants"], raw["variants"], strict=True):
        assert list(new) == list(old)


def test_the_first_reports_without_a_version_or_names_still_open(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    raw = _raw()
    del raw["schema_version"]
    for entry in raw["variants"]:
        if entry["backend"] == "converter":
            del entry["name"]  # the first reports named a variant by its mode only
    raw["variants"] = [v for v in raw["variants"] if v["backend"] == "converter"]
    (run / "report.json").write_text(json.dumps(raw), encoding="utf-8")
    report = read_report(run)
    assert report.schema_version == 1
    assert report.variant_names == [v["mode"] for v in raw["variants"]]


def test_write_then_read_gives_the_same_objects(tmp_path: Path) -> None:
    spec = VariantSpec(
        Mode.INT8, IOType.UINT8, backend=Backend.QUANTIZER, float_layers=("conv2d", "dense")
    )
    derived = VariantIdentity.from_spec(spec)
    derived = VariantIdentity(
        **{**derived.__dict__, "parent": "int8-uint8_q", "calibration_samples": 400}
    )
    report = RunReport.from_dict(_raw())
    report = RunReport(
        run=report.run,
        variants=(
            *report.variants,
            Variant(derived, VariantResult(status="failed", error="kernel refused conv2d")),
        ),
        reference=report.reference,
        dataset=report.dataset,
        preprocessing=report.preprocessing,
        options=report.options,
        environment=report.environment,
        pivot=report.pivot,
        warnings=report.warnings,
        recommendation=report.recommendation,
    )
    write_report(tmp_path, report)
    again = read_report(tmp_path)
    assert again == report
    last = again.variants[-1]
    assert last.name == "int8-uint8_q:keep=conv2d+dense"
    assert last.identity.parent == "int8-uint8_q"
    assert again.calibration_of(last) == (400, report.options["seed"])


def test_unknown_keys_survive_a_rewrite(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    raw = _raw()
    raw["diagnosis"] = {"int8": [{"layer": "conv2d", "kl": 0.5}]}
    raw["sweep"] = {"points": [{"calibration_samples": 8, "seed": 0, "mode": "int8"}]}
    raw["run"]["engine"] = "ray"
    raw["variants"][3]["diagnosis"] = {"suspects": ["conv2d"]}
    raw["reference"]["new_reference_field"] = [1, 2]
    (run / "report.json").write_text(json.dumps(raw), encoding="utf-8")
    report = read_report(run)
    assert report.extra["diagnosis"] == raw["diagnosis"]
    assert report.run.extra == {"engine": "ray"}
    assert report.variants[3].extra == {"diagnosis": {"suspects": ["conv2d"]}}
    write_report(run, report)
    out = _written(run)
    out.pop("schema_version")
    raw.pop("schema_version")
    for entry in raw["variants"]:
        if entry["flip_matrix"] is not None:
            entry["flip_matrix"] = _sparse(entry["flip_matrix"])
    assert out == raw


def test_the_stored_name_is_the_name_shown(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    raw = _raw()
    # A name no rule derives from the mode: it must be shown as stored, not rebuilt.
    raw["variants"][1]["name"] = "dynamic-from-sweep-3"
    (run / "report.json").write_text(json.dumps(raw), encoding="utf-8")
    table = format_table(read_report(run))
    # header, rule, original, float32, then the renamed variant
    assert table.splitlines()[4].startswith("dynamic-from-sweep-3 ")


def test_a_newer_schema_is_refused_in_one_line(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    raw = _raw()
    raw["schema_version"] = SCHEMA_VERSION + 1
    (run / "report.json").write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(QuantLensError, match=r"^report.json has schema 4, newer .*; upgrade"):
        read_report(run)


def test_a_variant_without_a_mode_is_refused_in_one_line(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    raw = _raw()
    del raw["variants"][0]["mode"]
    (run / "report.json").write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(QuantLensError, match=r"^a variant entry of report.json is not readable"):
        read_report(run)


def test_a_pending_variant_has_the_keys_of_a_schema_1_entry() -> None:
    entry = pending_variant(VariantSpec(Mode.INT8, IOType.INT8))
    written = _raw()["variants"][3]  # int8, done and timed
    # The timing phase adds latency_warning; everything else exists from the start, plus the
    # file id (schema 2) that names the variant's files.
    keys = [k for k in written if k != "latency_warning"]
    assert list(entry) == [keys[0], "file_id", *keys[1:]]
    assert entry["file_id"] == "int8"
    assert entry["status"] == "pending"
    assert entry["select_tf_ops_used"] == [] and entry["warnings"] == []
    assert all(entry[k] is None for k in ("n", "top1_agreement_pct", "latency_ms", "passed"))


def test_a_variant_reads_like_its_entry() -> None:
    entry = _raw()["variants"][3]
    variant = Variant.from_dict(entry)
    # The dense flip rows of schema 1 read as the sparse matrix this version writes.
    assert dict(variant) == {**entry, "flip_matrix": _sparse(entry["flip_matrix"])}
    assert variant["top1_agreement_ci95"] == entry["top1_agreement_ci95"]
    flips = variant.result.flip_matrix
    assert flips is not None
    assert flips.rows() == entry["flip_matrix"]
    assert flips.total == sum(map(sum, entry["flip_matrix"])) > 0


def test_report_html_of_a_schema_1_run_shows_its_numbers(tmp_path: Path) -> None:
    from core.reporting.html import render_report_html
    from tests.core.test_report_html import _parse, _row

    raw = _raw()
    parsed = _parse(render_report_html(_copy(tmp_path)))
    for entry in raw["variants"]:
        shown = f"{entry['name']} (pivot)" if entry["name"] == raw["pivot"] else entry["name"]
        # Each variant's reason follows it in a row of its own.
        assert _row(parsed, "verdict", f"{entry['name']} NO VERDICT")[1] == entry["verdict_reason"]
        row = _row(parsed, "verdict", shown)
        assert row[1] == entry["status"]
        assert row[2] == "NO VERDICT"  # the tiny model is near chance on its labels
        assert row[3] == f"{entry['size_bytes'] / 1e6:.3f}"
        lo, hi = entry["top1_agreement_ci95"]
        assert row[5] == f"{entry['top1_agreement_pct']:.2f} % ({lo:.2f} – {hi:.2f})"
        assert row[6] == str(entry["n"])
        split = entry["disagreement_split"]
        below = (
            f"{split['conversion']} conversion · {split['quantization']} quantization"
            if split and entry["disagreements"]
            else ""
        )
        assert row[9] == f"{entry['disagreements']}{below}"  # the split is on a line below
        assert row[10] == f"{entry['latency_ms']['p50']:.3f}"


def test_a_report_missing_keys_is_rewritten_with_the_keys_it_had(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    raw = _raw()
    del raw["pivot"], raw["run"]["command"]
    for entry in raw["variants"]:
        for key in ("role", "backend", "disagreement_split", "n_needed", "int16_layers"):
            del entry[key]
    (run / "report.json").write_text(json.dumps(raw), encoding="utf-8")
    write_report(run, read_report(run))
    out = _written(run)
    assert out.pop("schema_version") == 3
    raw.pop("schema_version")
    for entry in raw["variants"]:
        if entry["flip_matrix"] is not None:
            entry["flip_matrix"] = _sparse(entry["flip_matrix"])
    assert out == raw


# The four sections a stage or a later process writes whole, as QuantLens writes them (values
# typed by hand here), each with a key this version does not know.
_SECTIONS: dict[str, Any] = {
    "calibration": {
        "source": "held-out",
        "reason": "drawn from the data set, held out of evaluation",
        "requested": 8,
        "images": 8,
        "held_out": 8,
        "evaluable": 16,
        "path": None,
        "sha256": None,
        "file": "calibration.csv",
        "from_a_newer_version": 1,
    },
    "sweep": {
        "backend": "quantizer",
        "requested_sizes": [4, 8],
        "sizes": [4, 8],
        "seeds": 1,
        "pool_source": "held-out",
        "pool_images": 8,
        "evaluated_n": 16,
        "flat_within_pp": 0.5,
        "run_calibration_samples": 8,
        "notes": [],
        "modes": {
            "int8": {
                "points": [
                    {
                        "size": 4,
                        "seed": 1,
                        "agreement_pct": 93.75,
                        "ci95": [71.7, 98.9],
                        "n": 16,
                        "mean_kl": 0.01,
                        "size_bytes": 9000,
                        "file": "sweep/int8-n4-s1.tflite",
                        "new_point_field": "kept",
                    }
                ],
                "summary": [{"size": 4, "seeds": 1, "agreement_mean": 93.75}],
                "flattens_at": None,
                "run_size_enough": None,
                "statement": "int8: one size, no curve",
            },
            "int16x8": {"error": "int16x8_q: the LiteRT Quantizer failed", "points": []},
        },
        "statement": "int8: one size, no curve; int16x8: not swept",
        "new_sweep_field": [1],
    },
    "engine": {
        "name": "ray",
        "address": "10.0.0.1:6379",
        "nodes": ["10.0.0.1", "10.0.0.2"],
        "cpus": 8,
        "latency_node": "10.0.0.1",
        "batches_by_node": {"node-a": 3, "node-b": 2},
        "gpus": 0,
    },
    "tracking": {"uri": "http://mlflow:5000", "error": "connection refused", "retries": 2},
}


def test_the_sections_read_as_typed_objects_and_rewrite_unchanged(tmp_path: Path) -> None:
    from core.reporting.sections.calibration_record import CalibrationRecord
    from core.reporting.sections.engine_info import EngineInfo
    from core.reporting.sections.sweep_record import Sweep, SweepRow
    from core.reporting.sections.tracking_record import Tracking

    run = _copy(tmp_path)
    raw = {**_raw(), **json.loads(json.dumps(_SECTIONS))}
    (run / "report.json").write_text(json.dumps(raw), encoding="utf-8")
    report = read_report(run)

    assert isinstance(report.calibration, CalibrationRecord)
    assert (report.calibration.source, report.calibration.images) == ("held-out", 8)
    assert isinstance(report.sweep, Sweep)
    [row] = report.sweep.modes["int8"].points
    assert isinstance(row, SweepRow) and (row.size, row.ci95) == (4, (71.7, 98.9))
    assert report.sweep.modes["int16x8"].error == "int16x8_q: the LiteRT Quantizer failed"
    assert isinstance(report.engine, EngineInfo)
    assert report.engine.nodes == ("10.0.0.1", "10.0.0.2")
    assert report.engine.batches_by_node == {"node-a": 3, "node-b": 2}
    assert isinstance(report.tracking, Tracking)
    assert (report.tracking.error, report.tracking.run_id) == ("connection refused", None)
    # Readers that index the report see exactly what the file holds.
    assert report["sweep"]["modes"]["int8"]["points"][0]["new_point_field"] == "kept"
    assert not set(_SECTIONS) & set(report.extra)  # typed, not left in `extra`

    write_report(run, report)
    out = _written(run)
    for key, section in _SECTIONS.items():
        assert out[key] == section  # unknown keys inside each section survive too


def test_sections_built_in_code_write_what_the_stages_wrote_before() -> None:
    from core.reporting.sections.base import put_section
    from core.reporting.sections.engine_info import EngineInfo
    from core.reporting.sections.sweep_record import Sweep, SweepMode
    from core.reporting.sections.tracking_record import Tracking

    report: dict[str, Any] = {}
    put_section(report, EngineInfo(name="local", nodes=("host",), latency_node="host"))
    put_section(report, Tracking(uri="sqlite:///m.db", error="refused"))
    put_section(report, Sweep(modes={"int8": SweepMode()}))
    # Keys a writer never had are not invented: local has no cpus or batches, a refused
    # logging has no ids, an unsummarised mode only its points.
    assert report["engine"] == {
        "name": "local",
        "address": None,
        "nodes": ["host"],
        "latency_node": "host",
    }
    assert report["tracking"] == {"uri": "sqlite:///m.db", "error": "refused"}
    assert report["sweep"]["modes"] == {"int8": {"points": []}}


def test_a_variant_status_is_an_enum_that_reads_and_writes_the_same_words(
    tmp_path: Path,
) -> None:
    from core.types import VariantStatus

    report = RunReport.from_dict(_raw())
    assert {type(v.status) for v in report.variants} == {VariantStatus}
    assert [v.status for v in report.variants] == [v["status"] for v in _raw()["variants"]]
    assert report.variants[0].status is VariantStatus.DONE
    assert json.loads(json.dumps(report.to_dict()))["variants"][0]["status"] == "done"


def test_an_unknown_variant_status_is_refused_in_one_line(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    raw = _raw()
    raw["variants"][0]["status"] = "half-done"
    (run / "report.json").write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(QuantLensError, match=r"^a variant entry of report.json is not readable"):
        read_report(run)
