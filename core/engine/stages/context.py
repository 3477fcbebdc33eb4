"""What every stage receives: the job, its run folder, the loaded model, and report.json."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from core.inputs import rundir
from core.types import FINISHED_STATUSES, Dataset, JobSpec, ProgressEvent, VariantSpec

if TYPE_CHECKING:
    from core.engine.models import ReferenceModel
    from core.reporting.sections.base import S, Section
    from core.reporting.sections.variant import Variant

ProgressFn = Callable[[ProgressEvent], None]


class ReportFile:
    """report.json of the run, held as a dict and saved after every step.

    The report's shape belongs to the typed model (core.reporting.runmodel and its sections);
    a stage reads this copy through `variant` and `read_only` (read-only mappings) and changes
    it only through the methods below (core.reporting.report_changes), never by assigning keys.
    This keeps it on disk, current.
    Other writers may change the file while the worker runs (a rename, the supervisor), so a
    save merges: under the report lock it applies their changes since the last save to this
    copy, then writes it (core.reporting.report_merge).
    """

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data
        # The report as this worker last read or wrote it: what other writers changed since.
        self._base: dict[str, Any] = _snapshot(data)

    @classmethod
    def open(cls, run_dir: Path) -> ReportFile:
        """The run's report.json as a restarted worker left it; empty for a new run."""
        path = run_dir / rundir.REPORT
        return cls(path, rundir.read_json(path) if path.exists() else {})

    def save(self) -> None:
        from core.reporting.report_changes import fill_float32_reductions
        from core.reporting.report_merge import merge_into
        from core.reporting.runmodel import update_report

        fill_float32_reductions(self.data)

        def merged(current: dict[str, Any]) -> dict[str, Any]:
            if current:  # no file yet (a new run): nothing to merge
                merge_into(self.data, self._base, current)
            return self.data

        update_report(self.path.parent, merged, create=True)
        self._base = _snapshot(self.data)

    def put(self, section: Section) -> None:
        """Store a typed section (`sweep`, `calibration`, `engine`, `runtimes`:
        core.reporting.sections) in this copy, whole; the next `save` writes it."""
        from core.reporting.sections.base import put_section

        put_section(self.data, section)

    def section(self, kind: type[S]) -> S | None:
        """The section `kind` as this copy holds it, typed; None when absent."""
        from core.reporting.sections.base import section_of

        return section_of(self.data, kind)

    def variant(self, name: str) -> Mapping[str, Any]:
        """Variant `name`'s entry as this copy holds it, read-only (change it with `set_result`,
        `set_part`, `add_warnings`)."""
        return MappingProxyType(next(v for v in self.data["variants"] if v["name"] == name))

    @property
    def variant_names(self) -> list[str]:
        return [v["name"] for v in self.data.get("variants") or ()]

    @property
    def read_only(self) -> Mapping[str, Any]:
        """This copy, read-only, for readers of the whole report (the verdict, recommendations)."""
        return MappingProxyType(self.data)

    @property
    def reference(self) -> Mapping[str, Any]:
        """The original's measured section (`reference`), read-only."""
        return MappingProxyType(self.data["reference"])

    def typed_variant(self, name: str) -> Variant:
        from core.reporting.report_changes import variant_of

        return variant_of(self.data, name)

    def start(self, data: dict[str, Any]) -> None:
        """Hold a new run's report (core.reporting.report.new_report) in place of an empty one."""
        self.data = data

    def set_result(self, name: str, **fields: Any) -> None:
        """Change result fields of variant `name` by `VariantResult`'s names."""
        from core.reporting.report_changes import set_result

        set_result(self.data, name, **fields)

    def set_part(self, name: str, part: str, value: Any) -> None:
        """Store a declared part (`float_ops`, `diagnosis`, `auto_fix`, ...) on variant `name`."""
        from core.reporting.report_changes import set_variant_part

        set_variant_part(self.data, name, part, value)

    def drop_part(self, name: str, part: str) -> None:
        from core.reporting.report_changes import drop_variant_part

        drop_variant_part(self.data, name, part)

    def set_run_part(self, part: str, value: Any) -> None:
        """Store a declared top-level part (`preset_check`, `recommendation`, ...) whole."""
        from core.reporting.report_changes import set_run_part

        set_run_part(self.data, part, value)

    def set_measured(self, section: str, **fields: Any) -> None:
        """Fill fields of a measured section (`reference`, `dataset`)."""
        from core.reporting.report_changes import set_measured

        set_measured(self.data, section, **fields)

    def defer_diagnosis(self, name: str) -> None:
        """Variant `name` (it flipped no image) is diagnosed only when asked."""
        from core.reporting.report_changes import defer_diagnosis

        defer_diagnosis(self.data, name)

    def record_diagnosis(self, name: str, summary: Mapping[str, Any] | None) -> None:
        """Variant `name`'s per-layer diagnosis, and its suspects at the top of the report."""
        from core.reporting.report_changes import record_diagnosis

        record_diagnosis(self.data, name, summary)

    def set_run_status(self, status: str) -> None:
        from core.reporting.report_changes import set_run

        set_run(self.data, status=status)

    def add_warnings(self, lines: Iterable[str], *, variant: str | None = None) -> bool:
        """Warnings for the run (or variant `variant`), each said once; True when one was new."""
        from core.reporting.report_changes import add_warnings

        return add_warnings(self.data, lines, variant=variant)

    def put_variant(self, variant: Variant) -> None:
        """Store a variant whole: in place of the entry of its name, else after the others."""
        from core.reporting.report_changes import put_variant

        put_variant(self.data, variant)

    def files_of(self, name: str) -> rundir.HasFileId:
        """What the files of the variant called `name` are named by (its entry's file_id)."""
        entry = next((v for v in self.data.get("variants") or () if v["name"] == name), None)
        return rundir.FileId(name) if entry is None else rundir.entry_files(entry)

    @property
    def pivot(self) -> str | None:
        """The float32 TFLite variant quantized variants are split against, if the run has one."""
        pivot: str | None = self.data.get("pivot")
        return pivot


def _snapshot(data: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of a JSON object (a round trip through the C encoder: fast, and exactly
    what comparing with the file needs)."""
    return json.loads(json.dumps(data))  # type: ignore[no-any-return]


@dataclass(frozen=True)
class RunContext:
    """One job in the worker: its inputs, its folder, the loaded original, and its report."""

    job: JobSpec
    run_dir: Path
    progress: ProgressFn
    cache_dir: Path | None
    model: ReferenceModel
    model_sha: str
    dataset: Dataset  # samples whose labels the model can predict (the rest are skipped)
    specs: tuple[VariantSpec, ...]  # the user's variants plus the float32 pivot
    report: ReportFile
    calibration_data: Dataset | None = None  # --calibration-data's set, when given

    @property
    def threads(self) -> int:
        return effective_threads(self.job)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        sig = self.model.signature
        return (sig.height, sig.width, sig.channels)

    def emit(self, step: str, fraction: float, message: str, variant: str | None = None) -> None:
        """Send one progress event (the step named is the one about to run)."""
        emit(self.progress, step, fraction, message, variant)

    def pending(self) -> list[VariantSpec]:
        """Variants not finished yet (all of them unless a worker is restarted), pivot first.

        The pivot runs first, so its outputs exist when each quantized variant is split.
        """
        waiting = [
            s for s in self.specs if self.report.variant(s.name)["status"] not in FINISHED_STATUSES
        ]
        return sorted(waiting, key=lambda s: s.name != self.report.pivot)


def emit(
    progress: ProgressFn, step: str, fraction: float, message: str, variant: str | None = None
) -> None:
    progress(
        ProgressEvent(
            step=step, fraction=fraction, message=message, variant=variant, time=time.time()
        )
    )


def effective_threads(job: JobSpec) -> int:
    """The thread count both models run with: the job's, else every core but one."""
    from core.metrics.latency import default_threads

    return job.threads or default_threads()
