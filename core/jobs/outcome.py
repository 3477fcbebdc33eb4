"""Write down how a run, or one of its variants, ended: report.json, the store and status.json.

The supervisor uses it when a worker ends; the launcher when a run is cancelled before it
started or is found interrupted. Whoever ends a run, the three records end up saying the same.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from core.errors import QuantLensError
from core.inputs import rundir
from core.jobs.workspace import opened_store
from core.reporting import runmodel
from core.reporting.report_changes import set_result, set_run
from core.runfolder import protocol
from core.types import RunStatus, VariantStatus


def run_id_of(directory: Path) -> str:
    """The run's id, as its status.json records it (its folder's name for older runs)."""
    return str(protocol.read_status(directory).get("run_id") or directory.name)


def read_report(directory: Path) -> dict[str, Any] | None:
    """report.json through the one reader (any schema), as a dict the run's end can amend."""
    path = directory / rundir.REPORT
    return runmodel.read_report(directory).to_dict() if path.exists() else None


def finish_run(directory: Path, status: RunStatus, error: str | None, *, home: Path | None) -> None:
    """Give the run its final status everywhere, and delete the worker's scratch."""
    from core.jobs.rescore import status_after

    status, error = status_after(directory, status, error)
    remove_scratch(directory)
    run_id = run_id_of(directory)

    def ended(report: dict[str, Any]) -> None:
        set_run(report, status=status, id=run_id)
        if status is not RunStatus.DONE:
            note_untimed_variants(report, status)

    with opened_store(home) as store:
        report = runmodel.update_report(directory, ended)
        if report is not None:
            store.sync_report(run_id, report)
        store.set_status(run_id, status, error=error)
    # status.json is what watchers poll: it turns final only once the report and the store
    # already say the same.
    protocol.write_status(directory, status, error=error)


def remove_scratch(directory: Path) -> None:
    """Delete the worker's scratch (decoded images, calibration, converter temp dirs).

    A worker that finishes removes them itself; one that crashed, timed out or was cancelled
    cannot, so the run's end does it.
    """
    for name in protocol.SCRATCH_FILES:
        (directory / name).unlink(missing_ok=True)
    shutil.rmtree(directory / protocol.WORKER_TMP, ignore_errors=True)


def note_untimed_variants(report: dict[str, Any], status: RunStatus) -> None:
    """Say why a finished variant has no latency when the run ended before its timing step.

    Timing runs last, once every conversion is over, so no conversion shares the cores with
    it; timing after a cancel would go against what the user asked for.
    """
    ended = status.ended_words
    for variant in report["variants"]:
        if variant.get("status") == VariantStatus.DONE and not variant.get("latency_ms"):
            set_result(
                report,
                variant["name"],
                latency_note=f"not timed: the run {ended} before its timing step, which runs "
                "last so no conversion shares the cores",
            )


def close_unfinished_variants(directory: Path, status: VariantStatus, reason: str) -> None:
    """Give every pending/running variant of report.json its final status and reason."""
    closed: list[rundir.HasFileId] = []

    def close(report: dict[str, Any]) -> None:
        for variant in report["variants"]:
            if variant["status"] in (VariantStatus.PENDING, VariantStatus.RUNNING):
                set_result(report, variant["name"], status=status, error=reason)
                closed.append(rundir.entry_files(variant))

    runmodel.update_report(directory, close)
    for files in closed:
        remove_partial_outputs(directory, files)


def mark_variant(
    directory: Path,
    name: str,
    status: VariantStatus,
    reason: str,
    tail: str,
    *,
    home: Path | None,
) -> None:
    """Record one variant's end (a crash, a timeout) with the worker's stderr tail."""
    evaluated = False

    files: rundir.HasFileId = rundir.FileId(name)

    def mark(report: dict[str, Any]) -> None:
        nonlocal evaluated, files
        for variant in report["variants"]:
            if variant["name"] == name:
                files = rundir.entry_files(variant)
                evaluated = variant["status"] == VariantStatus.DONE  # e.g. a crash while timing it
                set_result(report, name, status=status, error=reason, stderr_tail=tail)

    if runmodel.update_report(directory, mark) is None:
        return
    if not evaluated:
        remove_partial_outputs(directory, files)
    sync_report_to_store(directory, home=home)


def remove_partial_outputs(directory: Path, variant: rundir.HasFileId) -> None:
    """Delete the per-sample files a variant that ended mid-evaluation left half written
    (they are appended batch by batch); readers then see no table, not a truncated one."""
    rundir.variant_samples_path(directory, variant).unlink(missing_ok=True)
    rundir.probs_path(directory, variant).unlink(missing_ok=True)


def sync_report_to_store(directory: Path, *, home: Path | None) -> None:
    """Copy report.json's variants to the store, so History shows them as they finish."""
    report = read_report(directory)
    if report is None:
        return
    try:
        with opened_store(home) as store:
            store.sync_report(run_id_of(directory), report)
    except QuantLensError as exc:  # a locked store must not stop the job; the files hold it all
        print(f"store not updated: {exc}", file=sys.stderr)
