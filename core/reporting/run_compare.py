"""What changed between runs or variants, and their headline numbers side by side (pure)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import QuantLensError
from core.metrics.latency import quotable_p99
from core.reporting.report import size_change_pct
from core.reporting.runmodel import RunReport, report_from
from core.reporting.sections.variant import VariantIdentity
from core.types import DEFAULT_MIN_AGREEMENT_PCT

MISSING = "—"
# Modes whose converter reads the representative data set; for the others the count is unused.
CALIBRATED_MODES = frozenset({"int8", "int16x8"})


@dataclass(frozen=True, eq=False)
class Compared:
    """One column of a comparison: a variant of a run, with the run's report."""

    label: str  # unique display label, "run name · variant"
    run_id: str
    run_name: str
    variant_name: str
    report: RunReport

    def __post_init__(self) -> None:
        if not isinstance(self.report, RunReport):
            object.__setattr__(self, "report", report_from(self.report))

    @property
    def variant(self) -> Mapping[str, Any]:
        """The variant (a read-only mapping of its report.json entry; empty when absent)."""
        found = self.report.variant(self.variant_name)
        return {} if found is None else found

    @property
    def identity(self) -> VariantIdentity | None:
        found = self.report.variant(self.variant_name)
        return None if found is None else found.identity


@dataclass(frozen=True)
class ChangeRow:
    """One compared property: its display values per item and whether they differ."""

    group: str
    field: str
    values: tuple[str, ...]
    differs: bool


def item_label(run_name: str, variant: str) -> str:
    """The display label of a run's variant: "run name · variant"."""
    return f"{run_name or 'unnamed run'} · {variant}"


def unique_labels(items: Sequence[tuple[str, str, str]]) -> list[str]:
    """Labels for (run_id, run_name, variant) triples, made unique with the run id when needed.

    Two runs may share a name; the label must still tell them apart in tables and charts.
    """
    base = [item_label(name, variant) for _, name, variant in items]
    counts: dict[str, int] = {}
    for b in base:
        counts[b] = counts.get(b, 0) + 1
    return [
        f"{b} [{rid}]" if counts[b] > 1 else b for b, (rid, _, _) in zip(base, items, strict=True)
    ]


def compared_items(
    selections: Sequence[tuple[str, str, str, RunReport | Mapping[str, Any]]],
) -> list[Compared]:
    """Build comparison columns from (run_id, run_name, variant, report) tuples.

    Raises:
        QuantLensError: a report has no variant of the requested name.
    """
    labels = unique_labels([(rid, name, variant) for rid, name, variant, _ in selections])
    out: list[Compared] = []
    for label, (rid, name, variant, report) in zip(labels, selections, strict=True):
        typed = report_from(report)
        if typed.variant(variant) is None:
            raise QuantLensError(
                f"run {name or rid!r} has no variant {variant!r}; pick one of "
                f"{', '.join(typed.variant_names) or 'none'}"
            )
        out.append(Compared(label, rid, name, variant, typed))
    return out


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def summary_rows(items: Sequence[Compared]) -> list[dict[str, Any]]:
    """One row of headline numbers per item; plain values (None when unknown), units in names."""
    rows = []
    for item in items:
        v = item.variant
        lat = v.get("latency_ms") or {}
        ci = v.get("top1_agreement_ci95") or [None, None]
        size = _num(v.get("size_bytes"))
        rows.append(
            {
                "run · variant": item.label,
                "status": str(v.get("status") or MISSING),
                "size (MB)": None if size is None else size / 1e6,
                "size change vs original (%)": size_change_pct(_num(v.get("size_reduction_pct"))),
                "top-1 agreement (%)": _num(v.get("top1_agreement_pct")),
                "CI low (%)": _num(ci[0]) if len(ci) == 2 else None,
                "CI high (%)": _num(ci[1]) if len(ci) == 2 else None,
                "n": v.get("n"),
                "top-k agreement (%)": _num(v.get("topk_agreement_pct")),
                "k": v.get("k"),
                "accuracy original (%)": _num(v.get("reference_accuracy_pct")),
                "accuracy TFLite (%)": _num(v.get("tflite_accuracy_pct")),
                "disagreements": v.get("disagreements"),
                "p50 (ms)": _num(lat.get("p50")),
                "p99 (ms)": quotable_p99(lat),  # only from 100 runs; below, max says it
                "max (ms)": _num(lat.get("max")),
            }
        )
    return rows


def _get(*path: str) -> Callable[[Compared], Any]:
    def read(item: Compared) -> Any:
        node: Any = item.report
        for key in path:
            if not isinstance(node, Mapping):
                return None
            node = node.get(key)
        return node

    return read


def _identity(key: str) -> Callable[[Compared], Any]:
    """A field of the variant's identity (enums as their text; None without a variant)."""

    def read(item: Compared) -> Any:
        value = None if item.identity is None else getattr(item.identity, key)
        return str(value) if isinstance(value, enum.Enum) else value

    return read


def _layers(key: str) -> Callable[[Compared], Any]:
    # Absent (older reports) and empty mean the same: no layer overridden.
    return lambda item: ", ".join(_identity(key)(item) or []) or "none"


def _calibration(index: int) -> Callable[[Compared], Any]:
    """The calibration size (0) or seed (1) the variant was made with: its own, else the run's."""

    def read(item: Compared) -> Any:
        variant = item.report.variant(item.variant_name)
        return None if variant is None else item.report.calibration_of(variant)[index]

    return read


def _calibration_source(item: Compared) -> Any:
    """held-out, overlapping, separate or none (issue 13); None in older reports."""
    calibration = item.report.calibration
    return None if calibration is None else calibration.source


def _input_size(item: Compared) -> Any:
    p = item.report.get("preprocessing") or {}
    dims = [p.get("height"), p.get("width"), p.get("channels")]
    return None if all(d is None for d in dims) else "×".join(str(d) for d in dims)


def _threads(item: Compared) -> Any:
    opt = (item.report.get("options") or {}).get("threads")
    env = (item.report.get("environment") or {}).get("threads")
    return opt if opt is not None else env


# (group, field, getter): what can make two measurements differ, in reading order.
CHANGE_FIELDS: tuple[tuple[str, str, Callable[[Compared], Any]], ...] = (
    ("model", "model path", _get("reference", "path")),
    ("model", "model sha256", _get("reference", "sha256")),
    ("model", "model format", _get("reference", "format")),
    ("variant", "mode", _identity("mode")),
    ("variant", "backend", _identity("backend")),
    ("variant", "parent variant", _identity("parent")),
    ("variant", "layers kept in float", _layers("float_layers")),
    ("variant", "layers with int16 activations", _layers("int16_layers")),
    ("variant", "I/O type", _identity("io_type")),
    ("variant", "SELECT_TF_OPS allowed", _identity("allow_select_tf_ops")),
    ("variant", "calibration samples", _calibration(0)),
    ("variant", "calibration images from", _calibration_source),
    ("preprocessing", "preset", _get("preprocessing", "preset")),
    ("preprocessing", "input size (H×W×C)", _input_size),
    ("preprocessing", "value range", _get("preprocessing", "value_range")),
    ("data", "data path", _get("dataset", "path")),
    ("data", "data file", _get("dataset", "file")),
    ("data", "data sha256", _get("dataset", "sha256")),
    ("data", "samples evaluated", _get("dataset", "num_samples")),
    ("data", "samples skipped", _get("dataset", "num_skipped")),
    ("options", "max samples", _get("options", "max_samples")),
    ("options", "threads", _threads),
    ("options", "seed", _calibration(1)),
    ("options", "latency runs", _get("options", "latency_runs")),
    ("options", "warm-up runs", _get("options", "warmup_runs")),
    ("options", "min agreement (%)", _get("options", "min_agreement_pct")),
    ("environment", "tensorflow", _get("environment", "tensorflow")),
    ("environment", "litert", _get("environment", "litert")),
    ("environment", "keras", _get("environment", "keras")),
    ("environment", "numpy", _get("environment", "numpy")),
    ("environment", "python", _get("environment", "python")),
    ("environment", "platform", _get("environment", "platform")),
    ("environment", "cpu", _get("environment", "cpu")),
)


def _display(field: str, value: Any, item: Compared) -> str:
    if value is None:
        text = "all" if field == "threads" else MISSING
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in value) + "]"
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    if field == "calibration samples":
        mode = "" if item.identity is None else str(item.identity.mode)
        if mode and mode not in CALIBRATED_MODES:
            text += f" (unused by {mode})"
    return text


def what_changed(items: Sequence[Compared], *, only_changed: bool = False) -> list[ChangeRow]:
    """Every property in CHANGE_FIELDS with its value per item and whether the items differ.

    Values are compared raw (a hash, a number), so two values that display alike but differ
    are still marked. A property unknown for every item is left out.

    Args:
        items: the compared variants, in column order.
        only_changed: keep only the rows whose values differ.
    """
    rows: list[ChangeRow] = []
    for group, field, getter in CHANGE_FIELDS:
        raw = [getter(item) for item in items]
        if all(r is None for r in raw) and field != "threads":
            continue
        # json-ish values (lists) are unhashable; their repr compares them faithfully enough.
        differs = len({repr(r) for r in raw}) > 1
        if only_changed and not differs:
            continue
        values = tuple(_display(field, r, item) for r, item in zip(raw, items, strict=True))
        rows.append(ChangeRow(group=group, field=field, values=values, differs=differs))
    return rows


def data_unverified(items: Sequence[Compared]) -> bool:
    """True when some item's report has no data content hash (runs made before it was recorded):
    equal paths then do not prove equal data."""
    return any(not _get("dataset", "sha256")(item) for item in items)


def sizes_bytes(items: Sequence[Compared]) -> dict[str, int]:
    """label -> .tflite size in bytes, for the items that have one (input of `size_figure`)."""
    out: dict[str, int] = {}
    for item in items:
        size = _num(item.variant.get("size_bytes"))
        if size is not None:
            out[item.label] = int(size)
    return out


def latency_percentiles(items: Sequence[Compared]) -> dict[str, dict[str, float | None]]:
    """label -> {"p50", "p90", "p99", "max", "n"} (ms; n runs), for items with latency."""
    out: dict[str, dict[str, float | None]] = {}
    for item in items:
        lat = item.variant.get("latency_ms") or {}
        if any(lat.get(k) is not None for k in ("p50", "p90", "p99")):
            out[item.label] = {k: _num(lat.get(k)) for k in ("p50", "p90", "p99", "max", "n")}
    return out


def threshold_pct(items: Sequence[Compared]) -> float:
    """The strictest agreement threshold among the items' runs (the default when none says)."""
    values = [_num(item.report.options.get("min_agreement_pct")) for item in items]
    known = [v for v in values if v is not None]
    return max(known) if known else DEFAULT_MIN_AGREEMENT_PCT
