"""The stages' changes to report.json go through the typed model (ReportFile's methods,
core.reporting.report_changes) and write the bytes the hand-written assignments wrote.

Each case applies one stage's change twice to the same real report (tests/fixtures/schema1_run,
a run written by QuantLens): once as plain dict assignments, the way the stages wrote it before
they had typed changes (spelled out here, independently of the model), once through the run
model; both are then written by the one writer and must be the same bytes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from core.engine.stages.context import ReportFile
from core.reporting.report import DIAGNOSIS_ON_REQUEST, pending_variant
from core.reporting.runmodel import RunReport, report_from
from core.reporting.sections.base import Section
from core.reporting.sections.deployability import (
    CellStatus,
    Deployability,
    IntegerOnlyCell,
    MicroCell,
    VelaCell,
)
from core.reporting.sections.fixes import HeldOutJudgement
from core.reporting.sections.flip_hunt import PerturbedAgreement
from core.reporting.sections.runtime_matrix import RuntimeCell, RuntimeMatrix
from core.reporting.sections.variant import Variant
from core.types import VariantSpec, VariantStatus

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "schema1_run" / "report.json"


def _fixture() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text(encoding="utf-8"))
    return data


def _entry(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in report["variants"] if v["name"] == name)


def _bytes(report: dict[str, Any]) -> str:
    """What the one writer puts in report.json for this copy."""
    return json.dumps(report_from(report).to_dict(), indent=2)


DEPLOYABILITY = Deployability(
    IntegerOnlyCell(integer_only=True, float_io=False),
    MicroCell(status=CellStatus.OK, arena_bytes=22016, version="1"),
    VelaCell(status=CellStatus.NOT_APPLICABLE, reason="no Vela here"),
)
FLIPS = (
    PerturbedAgreement("brightness +10 %", 24, 0, 24, 12, 50.0, (31.4, 68.6), 0),
    PerturbedAgreement("JPEG quality 75", 24, 6, 18, 12, 66.7, None, 1),
)
HELD_OUT = HeldOutJudgement(
    n=12, agreeing=11, top1_agreement_pct=91.7, top1_agreement_ci95=(64.6, 98.5), passed=False
)
LATENCY = {"p50": 0.02, "p90": 0.03, "mean": 0.021, "runs": 5, "blocks": [5]}
SPEEDUP = {"vs_float32": {"value": 1.1}, "vs_original": {"value": 14.2}}
MATRIX = RuntimeMatrix(
    runtimes=("xnnpack", "reference"),
    total=24,
    subset=8,
    seed=0,
    subset_indices=(1, 3, 4, 8, 10, 15, 20, 23),
    cells=(
        RuntimeCell("int8", "xnnpack", n=24, agree=12, agreement_pct=50.0, threads=2),
        RuntimeCell("int8", "reference", n=8, agree=4, runtime_flips=(3, 15), delegate="ref"),
        RuntimeCell("float32", "tflm", reason="float32 is not integer-only"),
    ),
)

# (what the stage did, by hand, to the report dict; the same through the run model)
Change = tuple[Callable[[dict[str, Any]], None], Callable[[ReportFile], None]]


def _by_hand_evaluate(r: dict[str, Any]) -> None:
    _entry(r, "int8")["status"] = VariantStatus.RUNNING
    failed = _entry(r, "int8_q")
    failed["status"] = VariantStatus.FAILED
    failed["error"] = "conversion failed: no"
    _entry(r, "dynamic")["float_ops"] = ["FULLY_CONNECTED dense"]


def _typed_evaluate(f: ReportFile) -> None:
    f.set_result("int8", status=VariantStatus.RUNNING)
    f.set_result("int8_q", status=VariantStatus.FAILED, error="conversion failed: no")
    f.set_part("dynamic", "float_ops", ["FULLY_CONNECTED dense"])


def _by_hand_latency(r: dict[str, Any]) -> None:
    r["reference"]["latency_ms"] = LATENCY
    r["reference"]["latency_warning"] = None
    entry = _entry(r, "int8")
    entry["latency_ms"] = LATENCY
    entry["latency_warning"] = "noisy"
    entry["speedup"] = SPEEDUP
    entry["speedup_vs_reference"] = entry["speedup"]["vs_original"]["value"]


def _typed_latency(f: ReportFile) -> None:
    f.set_measured("reference", latency_ms=LATENCY, latency_warning=None)
    f.set_result(
        "int8",
        latency_ms=LATENCY,
        latency_warning="noisy",
        speedup=SPEEDUP,
        speedup_vs_reference=14.2,
    )


def _by_hand_later_stages(r: dict[str, Any]) -> None:
    _entry(r, "int8")["deployability"] = DEPLOYABILITY.to_dict()
    _entry(r, "int8")["flip_hunt"] = [p.to_dict() for p in FLIPS]
    _entry(r, "int8")["warnings"].extend(["a diagnosis warning"])
    entry = _entry(r, "int8")
    entry["diagnosis"] = {"suspects": [{"layer": "dense"}]}
    entry.pop(DIAGNOSIS_ON_REQUEST, None)
    r.setdefault("diagnosis", {})["int8"] = ["dense"]
    _entry(r, "dynamic").setdefault(DIAGNOSIS_ON_REQUEST, "waiting")
    r["warnings"].append("only 24 of the 100 calibration images could be used")
    r["runtimes"] = MATRIX.to_dict()


def _typed_later_stages(f: ReportFile) -> None:
    f.set_result("int8", deployability=DEPLOYABILITY, flip_hunt=FLIPS)
    f.add_warnings(["a diagnosis warning"], variant="int8")
    f.record_diagnosis("int8", {"suspects": [{"layer": "dense"}]})
    f.defer_diagnosis("dynamic")
    f.add_warnings(["only 24 of the 100 calibration images could be used"])
    f.put(MATRIX)


def _by_hand_auto_fix(r: dict[str, Any]) -> None:
    _entry(r, "int8")["auto_fix"] = {"error": "no calibration images to make a fix with"}
    r["variants"].append(
        {
            **pending_variant(VariantSpec.parse("int8:keep=dense"), parent="int8"),
            "derived_by": "auto_fix",
        }
    )
    derived = r["variants"][-1]
    derived["judged_on_held_out"] = HELD_OUT.to_dict()
    derived["passed"] = False


def _typed_auto_fix(f: ReportFile) -> None:
    f.set_part("int8", "auto_fix", {"error": "no calibration images to make a fix with"})
    spec = VariantSpec.parse("int8:keep=dense")
    f.put_variant(Variant.from_dict(pending_variant(spec, parent="int8")))
    f.set_part(spec.name, "derived_by", "auto_fix")
    f.set_part(spec.name, "judged_on_held_out", HELD_OUT)
    f.set_result(spec.name, passed=False)


def _by_hand_start_and_finish(r: dict[str, Any]) -> None:
    r["reference"]["softmax_applied"] = True
    r["reference"]["accuracy_pct"] = 25.0
    r["dataset"]["num_samples"] = 24
    r["dataset"]["skipped"] = []
    r["preset_check"] = {"better": None, "advice": None, "n": 24}
    r["run"]["status"] = "done"
    r["recommendation"] = {"variant": "dynamic", "reason": "smallest"}
    r["recommendations"] = {"cpu": {"variant": "dynamic"}}


def _typed_start_and_finish(f: ReportFile) -> None:
    f.set_measured("reference", softmax_applied=True, accuracy_pct=25.0)
    f.set_measured("dataset", num_samples=24, skipped=[])
    f.set_run_part("preset_check", {"better": None, "advice": None, "n": 24})
    f.set_run_status("done")
    f.set_run_part("recommendation", {"variant": "dynamic", "reason": "smallest"})
    f.set_run_part("recommendations", {"cpu": {"variant": "dynamic"}})


CHANGES: dict[str, Change] = {
    "evaluate": (_by_hand_evaluate, _typed_evaluate),
    "latency": (_by_hand_latency, _typed_latency),
    "diagnose, deploy, perturb, runtimes": (_by_hand_later_stages, _typed_later_stages),
    "auto-fix": (_by_hand_auto_fix, _typed_auto_fix),
    "start, reference, finish": (_by_hand_start_and_finish, _typed_start_and_finish),
}


@pytest.mark.parametrize("stage", list(CHANGES))
def test_a_typed_change_writes_the_bytes_the_hand_written_one_did(
    stage: str, tmp_path: Path
) -> None:
    by_hand, typed = CHANGES[stage]
    expected = _fixture()
    by_hand(expected)
    copy_ = ReportFile(tmp_path / "report.json", _fixture())
    typed(copy_)
    assert _bytes(copy_.data) == _bytes(expected)
    # And the one writer keeps each such report as it is on a rewrite.
    assert _bytes(report_from(expected).to_dict()) == _bytes(expected)


def test_every_change_at_once_still_writes_the_same_bytes(tmp_path: Path) -> None:
    expected = _fixture()
    copy_ = ReportFile(tmp_path / "report.json", _fixture())
    for by_hand, typed in CHANGES.values():
        by_hand(expected)
        typed(copy_)
    assert _bytes(copy_.data) == _bytes(expected)


def test_a_misspelt_field_or_an_undeclared_part_is_refused(tmp_path: Path) -> None:
    copy_ = ReportFile(tmp_path / "report.json", _fixture())
    before = copy.deepcopy(copy_.data)
    with pytest.raises(TypeError):
        copy_.set_result("int8", latency_msec={"p50": 1.0})
    with pytest.raises(ValueError, match="not a declared part"):
        copy_.set_part("int8", "latency_note", "x")
    with pytest.raises(ValueError, match="not a declared part"):
        copy_.set_run_part("variants", [])
    assert copy_.data == before


def test_a_stage_reads_a_variant_entry_read_only(tmp_path: Path) -> None:
    copy_ = ReportFile(tmp_path / "report.json", _fixture())
    entry = copy_.variant("int8")
    assert entry["status"] == "done"
    with pytest.raises(TypeError):
        entry["status"] = "running"  # type: ignore[index]


def test_the_runtime_matrix_is_a_section_of_the_run_model() -> None:
    assert issubclass(RuntimeMatrix, Section) and issubclass(RuntimeCell, Section)
    data = _fixture()
    data["runtimes"] = MATRIX.to_dict()
    data["runtimes"]["cells"][0]["measured_by"] = "a newer QuantLens"  # a key this one lacks
    data["recommendations"] = {"cpu": None}  # an untyped key after it
    report = RunReport.from_dict(data)
    assert report.runtimes is not None
    assert report.runtimes.cells[1:] == MATRIX.cells[1:]
    assert report.runtimes.cells[0].extra == {"measured_by": "a newer QuantLens"}
    assert report.runtimes.cell("int8", "reference") == MATRIX.cells[1]
    assert report.runtimes.runtime_flips("int8") == {"reference": (3, 15)}
    # A rewrite keeps every key, where it was.
    assert json.dumps(report.to_dict()) == json.dumps(report_from(data).to_dict())
    assert list(report.to_dict())[-2:] == ["runtimes", "recommendations"]
    assert report.to_dict()["runtimes"]["cells"][0]["measured_by"] == "a newer QuantLens"
