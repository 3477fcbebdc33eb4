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
from core.reporting.runmodel import (
    SCHEMA_VERSION,
    RunReport,
    Variant,
    VariantIdentity,
    VariantResult,
    read_report,
    write_report,
)
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
