"""The run database's rows of a typed run: the run's identity columns, its variants, latency."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.reporting.runmodel import RunReport
from core.reporting.sections.variant import Variant

# Variant keys the store leaves in the run folder: they grow with the class count, and the
# pages read them from report.json, never from the store.
RUN_FOLDER_ONLY = ("flip_matrix",)

# The latency table's columns, in order; the summary keys of report.json's `latency_ms`.
LATENCY_KEYS = ("min", "p50", "p90", "p99", "mean", "std", "n")


@dataclass(frozen=True)
class RunColumns:
    """What a run's report says about the run itself; None leaves the stored value alone."""

    model_path: str | None
    model_format: str | None
    model_sha256: str | None
    data_path: str | None
    data_sha256: str | None
    preset: str | None
    options: Mapping[str, Any] | None
    versions: Mapping[str, Any] | None  # the whole `environment` entry
    cpu: str | None
    threads: int | None
    trusted: int | None  # 0 / 1 for SQLite


@dataclass(frozen=True)
class VariantRow:
    """One row of the variants table, with the variant's entry as its metrics JSON (less
    `RUN_FOLDER_ONLY`)."""

    name: str
    mode: str
    io_type: str | None
    options: Mapping[str, Any]
    status: str
    error: str | None
    size_bytes: int | None
    metrics: Mapping[str, Any]
    top1_agreement_pct: float | None
    passed: int | None  # 0 / 1 for SQLite
    latency: Mapping[str, Any] | None


def run_columns(report: RunReport) -> RunColumns:
    """The run table's columns a report fills in."""
    reference, dataset, env = report.reference, report.dataset, report.environment
    trusted = report.run.trusted
    return RunColumns(
        model_path=reference.get("path"),
        model_format=reference.get("format"),
        model_sha256=reference.get("sha256"),
        # The data set as the user named it (the job's CSV, folder or zip), as a queued run's
        # row has it: `path` is where it was read from (a zip's extracted folder).
        data_path=dataset.get("file") or dataset.get("path"),
        data_sha256=dataset.get("sha256"),
        preset=report.preprocessing.get("preset"),
        options=report.options or None,
        versions=env or None,
        cpu=env.get("cpu"),
        threads=env.get("threads"),
        trusted=None if trusted is None else int(bool(trusted)),
    )


def variant_row(variant: Variant) -> VariantRow:
    """The variants table's row of one variant."""
    ident, result = variant.identity, variant.result
    entry = variant.to_dict()
    # The options a History search or filter reads without opening the metrics JSON.
    options: dict[str, Any] = {
        k: entry[k] for k in ("allow_select_tf_ops", "select_tf_ops_used") if k in entry
    }
    return VariantRow(
        name=variant.name,
        mode=str(ident.mode),
        io_type=None if ident.io_type is None else str(ident.io_type),
        options=options,
        status=result.status,
        error=result.error,
        size_bytes=result.size_bytes,
        metrics={k: v for k, v in entry.items() if k not in RUN_FOLDER_ONLY},
        top1_agreement_pct=result.top1_agreement_pct,
        passed=None if result.passed is None else int(bool(result.passed)),
        latency=result.latency_ms,
    )


def latency_values(stats: Mapping[str, Any]) -> tuple[Any, ...]:
    """A latency summary as the latency table's columns, in `LATENCY_KEYS` order."""
    return tuple(stats.get(k) for k in LATENCY_KEYS)
