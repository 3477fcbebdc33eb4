"""The changes a writer makes to its copy of report.json (the worker's `ReportFile`, or the dict
an `update_report` change receives), each through the typed model: a variant's result fields
by name (`VariantResult`'s, so a misspelt key is an error, not a new key), the parts later
stages add to a variant or to the run (declared here), new variants, and warnings said once.

No stage assigns report.json keys itself (tests/test_run_model_readers.py greps for it): a new
key is a field of the model, or a part declared here, plus its writer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from core.reporting.report import DIAGNOSIS_ON_REQUEST, ON_REQUEST_WAITING, reduction_pct
from core.reporting.runmodel import RunInfo
from core.reporting.sections.base import MappingView, jsonable
from core.reporting.sections.variant import Variant

# What later stages add to a variant entry beside its identity and result, whole.
VARIANT_PARTS = frozenset(
    {
        "float_ops",  # the ops left computing in float (evaluate, read back from the file)
        "diagnosis",  # the per-layer diagnosis summary and its root causes (diagnose)
        DIAGNOSIS_ON_REQUEST,  # waiting | asked: diagnosed only when asked (diagnose)
        "auto_fix",  # the fix ladder's search, or why it could not run (auto-fix)
        "judged_on_held_out",  # a derived variant's judgement on held-out images (auto-fix)
        "derived_by",  # what made a derived variant (auto-fix, a re-score)
        "command",  # the command that re-scores a derived variant (a re-score)
    }
)

# What a stage stores whole at the top of report.json (besides the `Section`s, which go
# through `put_section`, and the variants).
RUN_PARTS = frozenset(
    {
        "preset_check",  # the original under every preset (start)
        "diagnosis",  # each diagnosed variant's suspect layers (diagnose)
        "recommendation",  # the run's target's pick (finish)
        "recommendations",  # every target's pick (finish)
    }
)

# The measured sections a stage fills in field by field (they stay mappings as written).
MEASURED = frozenset({"reference", "dataset"})


def _value(value: Any) -> Any:
    """What report.json holds for `value`: a typed part's dict, or the JSON form."""
    return value.to_dict() if isinstance(value, MappingView) else jsonable(value)


def _entry(report: Mapping[str, Any], name: str) -> dict[str, Any]:
    for entry in report["variants"]:
        if entry["name"] == name:
            return entry  # type: ignore[no-any-return]
    raise KeyError(f"report.json has no variant {name!r}")


def _known(key: str, allowed: frozenset[str], where: str) -> None:
    if key not in allowed:
        raise ValueError(
            f"{key!r} is not a declared part of {where} (core.reporting.report_changes)"
        )


def variant_of(report: Mapping[str, Any], name: str) -> Variant:
    """The typed variant `name` of a writer's copy."""
    return Variant.from_dict(_entry(report, name))


def put_variant(report: dict[str, Any], variant: Variant) -> None:
    """Store `variant` whole: in place of the entry of its name, else after the others."""
    entry = variant.to_dict()
    variants = report.setdefault("variants", [])
    for i, old in enumerate(variants):
        if old["name"] == variant.name:
            variants[i] = entry
            return
    variants.append(entry)


def set_result(report: dict[str, Any], name: str, **fields: Any) -> None:
    """Change some result fields of variant `name` (`VariantResult`'s names)."""
    put_variant(report, variant_of(report, name).with_result(**fields))


def set_variant_part(report: dict[str, Any], name: str, part: str, value: Any) -> None:
    """Store one of `VARIANT_PARTS` on variant `name`, whole."""
    _known(part, VARIANT_PARTS, "a variant entry")
    _entry(report, name)[part] = _value(value)


def drop_variant_part(report: dict[str, Any], name: str, part: str) -> None:
    """Remove one of `VARIANT_PARTS` from variant `name` (nothing when it has none)."""
    _known(part, VARIANT_PARTS, "a variant entry")
    _entry(report, name).pop(part, None)


def set_run_part(report: dict[str, Any], part: str, value: Any) -> None:
    """Store one of `RUN_PARTS` at the top of report.json, whole."""
    _known(part, RUN_PARTS, "report.json")
    report[part] = _value(value)


def set_measured(report: dict[str, Any], section: str, **fields: Any) -> None:
    """Fill some fields of a measured section (`reference`, `dataset`)."""
    _known(section, MEASURED, "report.json's measured sections")
    report.setdefault(section, {}).update({k: _value(v) for k, v in fields.items()})


def set_run(report: dict[str, Any], **fields: Any) -> None:
    """Change fields of the `run` entry (`RunInfo`'s: id, name, status, ...); a status is
    written as its words."""
    for key in fields:
        _known(key, frozenset(RunInfo.KEYS), "the `run` entry")
    if "status" in fields:
        fields["status"] = str(fields["status"])
    report.setdefault("run", {}).update(fields)


def add_warnings(
    report: dict[str, Any], lines: Iterable[str], *, variant: str | None = None
) -> bool:
    """Add warnings to the run (or to variant `name`), each said once; True when one was new."""
    if variant is None:
        said: list[str] = report.setdefault("warnings", [])
        new = [w for w in dict.fromkeys(lines) if w not in said]
        said.extend(new)
        return bool(new)
    typed = variant_of(report, variant)
    new = [w for w in dict.fromkeys(lines) if w not in typed.result.warnings]
    if new:
        put_variant(report, typed.with_result(warnings=(*typed.result.warnings, *new)))
    return bool(new)


def defer_diagnosis(report: dict[str, Any], name: str) -> None:
    """Mark a finished variant that flipped no image as diagnosed only when asked (a variant
    already asked for stays asked)."""
    _entry(report, name).setdefault(DIAGNOSIS_ON_REQUEST, ON_REQUEST_WAITING)


def record_diagnosis(report: dict[str, Any], name: str, summary: Mapping[str, Any] | None) -> None:
    """A variant's per-layer diagnosis (core.engine.diagnose): on its entry, and its suspects'
    layer names in the top-level `diagnosis` (DESIGN §9; the full table is `<name>.layers.csv`)."""
    set_variant_part(report, name, "diagnosis", summary)
    drop_variant_part(report, name, DIAGNOSIS_ON_REQUEST)
    top = report.setdefault("diagnosis", {})
    top[name] = None if summary is None else [s["layer"] for s in summary["suspects"]]


def fill_float32_reductions(report: dict[str, Any]) -> None:
    """Reduction against the float32 TFLite baseline, once that variant exists (each save)."""
    baseline = next(
        (v["size_bytes"] for v in report["variants"] if v["mode"] == "float32" and v["size_bytes"]),
        None,
    )
    for variant in report["variants"]:
        if variant["size_bytes"]:
            value = reduction_pct(variant["size_bytes"], baseline)
            # Only a change goes through the model: this runs at every save.
            if "size_reduction_vs_float32_pct" not in variant or (
                variant["size_reduction_vs_float32_pct"] != value
            ):
                set_result(report, variant["name"], size_reduction_vs_float32_pct=value)
