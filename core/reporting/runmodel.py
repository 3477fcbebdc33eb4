"""The typed run model: report.json as frozen dataclasses, written and read in one place each.

A run is a `RunReport`: its `RunInfo`, its variants (core.reporting.sections.variant) and the
sections a stage or a later process adds whole (`calibration`, `sweep`, `engine`, `tracking`,
`runtimes`: `Section`s in core.reporting.sections, which the writer builds and `put_section` stores, so no
writer assembles their dicts by hand). `write_report` is the one function that serialises
report.json, `update_report` the one read-change-write under the report lock, and
`read_report` the one that reads it back, whatever its schema.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import QuantLensError
from core.inputs import rundir
from core.reporting.sections.base import (
    MappingView,
    Section,
    as_read,
    jsonable,
    section_of,
    unknown_keys,
)
from core.reporting.sections.calibration_record import CalibrationRecord
from core.reporting.sections.engine_info import EngineInfo
from core.reporting.sections.runtime_matrix import RuntimeMatrix
from core.reporting.sections.sweep_record import Sweep
from core.reporting.sections.tracking_record import Tracking
from core.reporting.sections.variant import Variant
from core.types import DEFAULT_MIN_AGREEMENT_PCT, short_name

# 1: what QuantLens wrote before the typed model (`schema_version` 1, or none at all).
# 2: the same keys and values; a variant may add `parent`, `calibration_samples` and
#    `calibration_seed` to its identity.
# 3: a variant's `flip_matrix` is sparse, `{"classes": C, "cells": [[ref, tfl, count], ...]}`
#    (see `FlipMatrix`); schemas 1 and 2 hold the dense C x C rows.
SCHEMA_VERSION = 3

VERDICT_POINT = "point"


# The sections RunReport reads into typed fields, by their report.json key.
# Sections typed after report.json had them untyped, written where the file had them among the
# keys this model does not know (a rewrite then moves no key), not in this order.
LATE_SECTIONS = frozenset({"runtimes"})
SECTIONS: tuple[type[Section], ...] = (
    CalibrationRecord,
    Sweep,
    EngineInfo,
    Tracking,
    RuntimeMatrix,
)


# -- a run -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo(MappingView):
    """The `run` entry: id, name, when, status, the command that reproduces it, trusted mode."""

    id: str = ""
    name: str = ""
    created: str | None = None
    status: str | None = None
    command: str | None = None
    trusted: bool | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    present: frozenset[str] | None = field(default=None, compare=False, repr=False)

    KEYS = ("id", "name", "created", "status", "command", "trusted")

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> RunInfo:
        values = {k: entry[k] for k in cls.KEYS if k in entry}
        for key in ("id", "name"):
            values[key] = str(values.get(key) or "")
        return cls(**values, extra=unknown_keys(entry, cls.KEYS), present=frozenset(entry))

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.KEYS}
        return {**as_read(self, d), **dict(self.extra)}


# Top-level keys the model reads into typed fields, in report.json order.
_RUN_KEYS = (
    "schema_version",
    "run",
    "reference",
    "dataset",
    "preprocessing",
    "options",
    "pivot",
    "variants",
    "environment",
    "warnings",
    "recommendation",
)


@dataclass(frozen=True)
class RunReport(MappingView):
    """One run's report.json.

    The measured sections (`reference`, `dataset`, `preprocessing`, `options`, `environment`)
    stay mappings as written; what readers judge by has typed accessors (`threshold_pct`,
    `verdict_rule`, `calibration_of`).
    """

    run: RunInfo = field(default_factory=RunInfo)
    variants: tuple[Variant, ...] = ()
    reference: Mapping[str, Any] = field(default_factory=dict)
    dataset: Mapping[str, Any] = field(default_factory=dict)
    preprocessing: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    environment: Mapping[str, Any] = field(default_factory=dict)
    pivot: str | None = None
    warnings: tuple[str, ...] = ()
    recommendation: Mapping[str, Any] | None = None
    calibration: CalibrationRecord | None = None  # None in runs older than the record
    sweep: Sweep | None = None  # only with --calibration-sweep
    engine: EngineInfo | None = None
    tracking: Tracking | None = None  # once logged to MLflow (or refused there)
    runtimes: RuntimeMatrix | None = None  # only with --runtimes
    schema_version: int = SCHEMA_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)
    present: frozenset[str] | None = field(default=None, compare=False, repr=False)
    # The order of the keys of the object this was read from: where `LATE` keys are written.
    key_order: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunReport:
        """Read a report.json object of any schema this version knows.

        Raises:
            QuantLensError: a newer schema than this QuantLens reads, or an unreadable entry.
        """
        version = int(data.get("schema_version") or 1)  # the first reports had no version
        if version > SCHEMA_VERSION:
            raise QuantLensError(
                f"report.json has schema {version}, newer than this QuantLens reads "
                f"({SCHEMA_VERSION}); upgrade QuantLens to open it"
            )
        variants = tuple(
            Variant.from_dict(v) for v in data.get("variants") or [] if isinstance(v, Mapping)
        )
        # A section that is not an object (no writer made one) stays in `extra` as it is.
        typed = tuple(k.KEY for k in SECTIONS if isinstance(data.get(k.KEY), Mapping))
        return cls(
            run=RunInfo.from_dict(data.get("run") or {}),
            variants=variants,
            reference=dict(data.get("reference") or {}),
            dataset=dict(data.get("dataset") or {}),
            preprocessing=dict(data.get("preprocessing") or {}),
            options=dict(data.get("options") or {}),
            environment=dict(data.get("environment") or {}),
            pivot=data.get("pivot"),
            warnings=tuple(str(w) for w in data.get("warnings") or ()),
            recommendation=data.get("recommendation"),
            calibration=section_of(data, CalibrationRecord),
            sweep=section_of(data, Sweep),
            engine=section_of(data, EngineInfo),
            tracking=section_of(data, Tracking),
            runtimes=section_of(data, RuntimeMatrix),
            schema_version=version,
            extra=unknown_keys(data, _RUN_KEYS + typed),
            present=frozenset(data) | {"schema_version"},  # always written
            key_order=tuple(data),
        )

    def to_dict(self) -> dict[str, Any]:
        """The report.json object; written as schema `SCHEMA_VERSION` whatever it was read as."""
        d: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "run": self.run.to_dict(),
            "reference": jsonable(self.reference),
            "dataset": jsonable(self.dataset),
            "preprocessing": jsonable(self.preprocessing),
            "options": jsonable(self.options),
            "pivot": self.pivot,
            "variants": [v.to_dict() for v in self.variants],
            "environment": jsonable(self.environment),
            "warnings": list(self.warnings),
        }
        if self.recommendation is not None:
            d["recommendation"] = jsonable(self.recommendation)
        late: dict[str, Any] = {}
        for kind in SECTIONS:
            section = getattr(self, kind.KEY)
            if section is not None:
                (late if kind.KEY in LATE_SECTIONS else d)[kind.KEY] = section.to_dict()
        late |= jsonable(self.extra)
        # Where the object read held them, new ones last (sorted is stable).
        position = {k: i for i, k in enumerate(self.key_order)}
        late = dict(sorted(late.items(), key=lambda kv: position.get(kv[0], len(position))))
        return {**as_read(self, d), **late}

    def __getitem__(self, key: str) -> Any:
        # Readers that index the report get the typed variants, not their dicts.
        if key == "variants":
            return self.variants
        return self._as_dict[key]

    # -- what readers judge by --------------------------------------------------------------
    @property
    def threshold_pct(self) -> float:
        """The agreement a variant needs to pass, in % (the default when not recorded)."""
        value = self.options.get("min_agreement_pct")
        return DEFAULT_MIN_AGREEMENT_PCT if value is None else float(value)

    @property
    def verdict_rule(self) -> str:
        """The verdict rule the run was judged by; reports older than `--verdict`: the point."""
        return str(self.options.get("verdict") or VERDICT_POINT)

    @property
    def variant_names(self) -> list[str]:
        return [v.name for v in self.variants]

    def variant(self, name: str) -> Variant | None:
        """The variant of that name, or None."""
        return next((v for v in self.variants if v.name == name), None)

    def files_of(self, name: str) -> rundir.HasFileId:
        """What the files of the variant called `name` are named by: its entry, or (a name
        the report does not list) the name itself, as files were named before file ids."""
        return self.variant(name) or rundir.FileId(name)

    def calibration_of(self, variant: Variant) -> tuple[int | None, int | None]:
        """(calibration samples, seed) a variant was made with: its own, else the run's."""
        ident = variant.identity
        samples = ident.calibration_samples
        seed = ident.calibration_seed
        return (
            self.options.get("calibration_samples") if samples is None else samples,
            self.options.get("seed") if seed is None else seed,
        )

    def display_name(self, variant: Variant) -> str:
        """A variant's name as listed: `float32 (pivot)` for the run's pivot; a long name is
        summarised (`int8:keep=a+b+c … and 9 more`, core.types.short_name)."""
        shown = short_name(variant.name)
        return f"{shown} (pivot)" if variant.name == self.pivot else shown


def report_from(report: RunReport | Mapping[str, Any]) -> RunReport:
    """The typed report of a report.json object, or the report itself when already typed."""
    return report if isinstance(report, RunReport) else RunReport.from_dict(report)


@contextlib.contextmanager
def report_lock(run_dir: Path) -> Iterator[None]:
    """Hold the run's report lock: an exclusive `flock` on the run folder itself.

    Every writer of report.json (the worker, the supervisor, a re-score, a rename, MLflow)
    reads, changes and writes it under this lock, so none of them writes back a copy read
    before another's change. The folder, not report.json, is locked: an atomic write replaces
    the file's inode, and a lock file would be one more file in the user's `--out`. The kernel
    drops the lock when its holder dies, even on SIGKILL. Not re-entrant: a holder calls
    `_write_unlocked`, never `write_report`.
    """
    import fcntl

    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _write_unlocked(run_dir: Path, report: RunReport | Mapping[str, Any]) -> dict[str, Any]:
    data = report_from(report).to_dict()
    rundir.write_json_atomic(Path(run_dir) / rundir.REPORT, data)
    return data


def write_report(run_dir: Path, report: RunReport | Mapping[str, Any]) -> None:
    """Write `run_dir/report.json` whole and atomically, under the report lock.

    For a new report only: a change to an existing one goes through `update_report`, which
    reads the current file under the same lock.
    """
    with report_lock(run_dir):
        _write_unlocked(run_dir, report)


ReportChange = Callable[[dict[str, Any]], "RunReport | Mapping[str, Any] | None"]


def update_report(
    run_dir: Path, change: ReportChange, *, create: bool = False
) -> dict[str, Any] | None:
    """Read report.json, apply `change`, and write the result, all under the report lock.

    Args:
        run_dir: the run folder.
        change: called with the current report as a dict (read through `RunReport`, so in
            this version's schema); it changes the dict in place and returns None, or
            returns the new report.
        create: when report.json does not exist yet, call `change` with `{}` (the worker
            opening a new run) instead of doing nothing.

    Returns:
        The report as written (a dict), or None when there was no report and not `create`.

    Raises:
        QuantLensError: the current report is not readable (see `read_report`).
    """
    with report_lock(run_dir):
        if (Path(run_dir) / rundir.REPORT).is_file():
            current = read_report(run_dir).to_dict()
        elif create:
            current = {}
        else:
            return None
        changed = change(current)
        return _write_unlocked(run_dir, current if changed is None else changed)


def read_report(run_dir: Path) -> RunReport:
    """Read `run_dir/report.json` (schema 1 or 2): the one place report.json is parsed.

    Raises:
        QuantLensError: no report yet, not JSON, not an object, or an unreadable entry.
    """
    path = Path(run_dir) / rundir.REPORT
    name = Path(run_dir).name
    if not path.is_file():
        raise QuantLensError(
            f"run {name} has no report yet; wait for it to finish or pick another run"
        )
    try:
        data = rundir.read_json(path)
    except (OSError, ValueError) as exc:
        raise QuantLensError(
            f"report of run {name} is unreadable ({exc}); re-run the job"
        ) from None
    if not isinstance(data, dict):
        raise QuantLensError(f"report of run {name} is not a JSON object; re-run it")
    return RunReport.from_dict(data)
