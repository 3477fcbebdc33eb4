"""report.json has one locked read-modify-write (core.reporting.runmodel.update_report), and the
worker's long-lived copy merges other writers' changes instead of writing back a stale copy.

The run folder is the schema-1 fixture: a real finished run written by QuantLens.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path
from typing import Any

from core.engine.stages.context import ReportFile
from core.reporting.report import pending_variant
from core.reporting.runmodel import read_report, update_report
from core.reporting.sections.variant import Variant
from core.types import VariantSpec, VariantStatus

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "schema1_run"
ROUNDS = 50


def _entry(name: str) -> dict[str, Any]:
    return {**pending_variant(VariantSpec.parse("int8")), "name": name}


def _add_by_update(run_dir: str, prefix: str) -> None:
    """A writer that reads, changes and writes the report each time (a re-score, a rename)."""
    for i in range(ROUNDS):

        def add(report: dict[str, Any], name: str = f"{prefix}-{i}") -> None:
            report["variants"].append(_entry(name))

        update_report(Path(run_dir), add)


def _add_by_worker(run_dir: str, prefix: str) -> None:
    """The worker: one copy opened at start, changed and saved after every step."""
    report = ReportFile.open(Path(run_dir))
    for i in range(ROUNDS):
        report.put_variant(Variant.from_dict(_entry(f"{prefix}-{i}")))
        report.save()


def _run_together(run_dir: Path, *writers: tuple[Any, str]) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=fn, args=(str(run_dir), prefix)) for fn, prefix in writers]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0


def _copy(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    return run


def _names(run_dir: Path) -> list[str]:
    data = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    return [v["name"] for v in data["variants"]]


def test_two_processes_updating_one_report_keep_every_variant(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    before = _names(run)
    _run_together(run, (_add_by_update, "a"), (_add_by_update, "b"))
    names = _names(run)
    assert names[: len(before)] == before
    added = set(names) - set(before)
    assert added == {f"{p}-{i}" for p in "ab" for i in range(ROUNDS)}
    assert len(names) == len(before) + 2 * ROUNDS  # and none twice


def test_the_worker_keeps_variants_another_process_adds_meanwhile(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    before = _names(run)
    _run_together(run, (_add_by_worker, "worker"), (_add_by_update, "rescore"))
    added = set(_names(run)) - set(before)
    assert added == {f"{p}-{i}" for p in ("worker", "rescore") for i in range(ROUNDS)}


def test_a_rename_while_the_worker_runs_is_not_undone_by_its_next_save(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    worker = ReportFile.open(run)  # as a re-score's worker opens the finished run
    worker.set_result("int8", status=VariantStatus.RUNNING)
    worker.save()

    def renamed(report: dict[str, Any]) -> None:  # what History's rename does
        report["run"]["name"] = "renamed in History"

    update_report(run, renamed)
    # The worker goes on with its copy, read before the rename.
    worker.set_result("int8", status=VariantStatus.DONE, latency_note="timed later")
    worker.save()
    report = read_report(run)
    assert report.run.name == "renamed in History"
    variant = report.variant("int8")
    assert variant is not None
    assert variant.status == "done" and variant.result.latency_note == "timed later"
    # The worker's own copy now holds the new name too: a later save keeps it.
    worker.save()
    assert read_report(run).run.name == "renamed in History"


def test_an_absent_report_is_left_absent(tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []
    assert update_report(tmp_path, calls.append) is None
    assert calls == [] and not (tmp_path / "report.json").exists()


def test_the_merge_applies_only_what_the_other_writer_changed() -> None:
    from core.reporting.report_merge import merge_into

    base = {
        "run": {"name": "old", "status": "running"},
        "warnings": [],
        "variants": [{"name": "a", "status": "running"}, {"name": "b", "status": "done"}],
    }
    theirs = json.loads(json.dumps(base))
    theirs["run"]["name"] = "renamed"  # theirs only: taken
    theirs["run"]["status"] = "cancelled"  # both changed it: the worker's value stands
    theirs["variants"] = [base["variants"][0], {"name": "c", "status": "pending"}]  # b gone, c new
    theirs["tracking"] = {"run_id": "x"}
    mine = json.loads(json.dumps(base))
    reference = mine["variants"][0]  # a stage's reference into the worker's copy
    mine["run"]["status"] = "done"
    reference["status"] = "done"
    merge_into(mine, base, theirs)
    assert mine == {
        "run": {"name": "renamed", "status": "done"},
        "warnings": [],
        "variants": [{"name": "a", "status": "done"}, {"name": "c", "status": "pending"}],
        "tracking": {"run_id": "x"},
    }
    assert mine["variants"][0] is reference  # merged in place, so the stage's reference is live
