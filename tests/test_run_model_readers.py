"""Every reader takes a variant's identity from the typed run model, and the shared constants
are written once: a grep over the source, since a re-derived name reads fine until it is wrong."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [
    ROOT / "app.py",
    *sorted(p for d in ("core", "ui", "views") for p in (ROOT / d).rglob("*.py")),
]

# `v.get("name") or v.get("mode")`, `x.get('name') or ...`: a name rebuilt from other fields.
NAME_REDERIVED = re.compile(r"""\.get\(\s*["']name["']\s*\)\s*or\b""")
# The five statuses a run or variant ends in, spelled out again instead of FINISHED_STATUSES.
FINISHED_SPELLED_OUT = re.compile(r'"failed",\s*"crashed",\s*"timeout",\s*"cancelled"')
# The default threshold as a literal instead of DEFAULT_MIN_AGREEMENT_PCT (`95.0` quoted in a
# docstring is prose, not a default).
DEFAULT_THRESHOLD = re.compile(r"(?<![\w.`])95\.0(?![\d`])")


def _hits(pattern: re.Pattern[str], *, allowed: tuple[str, ...] = ()) -> list[str]:
    found = []
    for path in SOURCES:
        rel = path.relative_to(ROOT).as_posix()
        if rel in allowed:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if pattern.search(line):
                found.append(f"{rel}:{number}: {line.strip()}")
    return found


def test_the_sources_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in SOURCES}
    assert {"app.py", "core/reporting/runmodel.py", "ui/widgets.py", "views/overview.py"} <= names


def test_no_reader_rederives_a_variant_name() -> None:
    assert _hits(NAME_REDERIVED) == []


def test_the_finished_statuses_are_written_once() -> None:
    assert _hits(FINISHED_SPELLED_OUT) == []


def test_the_default_threshold_is_written_once() -> None:
    [hit] = _hits(DEFAULT_THRESHOLD)
    assert hit.startswith("core/types.py:") and "DEFAULT_MIN_AGREEMENT_PCT = 95.0" in hit


# A typed section (core.reporting.sections.base.Section) assembled as a dict in report.json by hand:
# `report["sweep"] = {...}`, `data["engine"]["batches_by_node"] = ...`.
SECTION_WRITTEN_BY_HAND = re.compile(
    r"""\[\s*["'](sweep|calibration|engine|tracking)["']\s*\](\s*\[[^\]]*\])*\s*=[^=]"""
)
# A variant status compared with or set to a bare word instead of VariantStatus (SQL's
# single-quoted words are the store's, which holds the same words).
STATUS_SPELLED_OUT = re.compile(
    r'status["\')\]]*\s*(==|!=|=|in)\s*\(?"(pending|running|done|failed|crashed|timeout|cancelled)"'
)


def test_no_writer_assembles_a_typed_section_by_hand() -> None:
    assert _hits(SECTION_WRITTEN_BY_HAND) == []


def test_variant_statuses_are_the_enum_not_bare_words_in_core() -> None:
    hits = [h for h in _hits(STATUS_SPELLED_OUT) if h.startswith("core/")]
    assert hits == []


# A stage writing report.json by hand instead of through the run model's typed changes
# (ReportFile.set_result / set_part / add_warnings / put ..., core.reporting.report_changes):
# a key assigned or a list grown in a variant entry (`run.report.variant(name)["x"] = ...`,
# `entry["x"] = ...`, `...["warnings"].extend(...)`) or in the writer's dict
# (`run.report.data["x"] = ...`, `report.data.setdefault(...)`), the dict taken under another
# name to be written (`report = run.report.data`), or handed to a function that writes it.
_GROWS = r"(=[^=]|\.(append|extend|update|setdefault|pop|insert)\()"
KEY_WRITTEN_BY_HAND = re.compile(
    r"\.variant\([^)]*\)(\[[^\]]*\])+\s*"
    + _GROWS
    + r"|\breport\.data(\[[^\]]*\])*\s*"
    + _GROWS
    + r"|\bentry(\[[^\]]*\])+\s*"
    + _GROWS
    + r"|=\s*(run\.)?report\.data\s*$"
    + r"|\(\s*(run\.)?report\.data\b"
)


def _engine_hits(pattern: re.Pattern[str]) -> list[str]:
    return [h for h in _hits(pattern) if h.startswith("core/engine/")]


def test_no_stage_writes_a_report_key_by_hand() -> None:
    assert _engine_hits(KEY_WRITTEN_BY_HAND) == []


# The other writers (the supervisor's outcome, a re-score, MLflow, History's rename) change
# the dict `update_report` hands them: through core.reporting.report_changes as well.
DICT_WRITTEN_BY_HAND = re.compile(
    r"\b(report|current|variant|entry)(\[[^\]]*\])+\s*"
    + _GROWS
    + r"|\b(report|current)\.setdefault\("
)
# What may assign report.json's keys: the model itself, and status.json's writer (its own file).
REPORT_OWNERS = (
    "core/reporting/report_changes.py",
    "core/reporting/sections/base.py",
    "core/runfolder/protocol.py",
)


def test_no_writer_changes_report_json_by_hand() -> None:
    assert _hits(DICT_WRITTEN_BY_HAND, allowed=REPORT_OWNERS) == []


def test_the_hand_written_key_check_sees_each_form() -> None:
    written = [
        'run.report.variant(spec.name)["status"] = VariantStatus.RUNNING',
        'run.report.variant(name)["warnings"].extend(found.warnings)',
        'entry["deployability"] = Deployability(a, b, c).to_dict()',
        'entry["speedup"]["value"] = 2.0',
        'report.data["warnings"].append(line)',
        'run.report.data.setdefault("warnings", [])',
        "report = run.report.data",
        "record_diagnosis(run.report.data, spec.name, summary)",
    ]
    assert all(DICT_WRITTEN_BY_HAND.search(line) for line in written[2:4])
    assert DICT_WRITTEN_BY_HAND.search('current["run"]["status"] = status')
    assert DICT_WRITTEN_BY_HAND.search('variant["status"] = status')
    read = [
        'if run.report.variant(s.name)["status"] == VariantStatus.DONE',
        'run.report.set_result(name, status=VariantStatus.FAILED, error="x")',
        'entry.get("parent")',
        "return run.report.data",
        'reference = run.report.reference["size_bytes"]',
    ]
    assert all(KEY_WRITTEN_BY_HAND.search(line) for line in written)
    assert not any(KEY_WRITTEN_BY_HAND.search(line) for line in read)
