"""The store's row of a run shows the data set as the user named it, whether the run finished
(its row synced from report.json) or was cancelled while queued (its row from job.json)."""

from __future__ import annotations

from pathlib import Path

from core.history.store import open_store
from core.types import JobSpec, RunStatus


def test_a_finished_and_a_cancelled_run_on_the_same_zip_show_the_same_data(
    tmp_path: Path,
) -> None:
    data_zip = "/uploads/abc/digits.zip"
    job = JobSpec(model_path="/m/net.keras", data_path=data_zip, variants=("int8",))
    store = open_store(tmp_path)
    try:
        for run_id in ("finished", "cancelled"):
            store.create_run(run_id, name=run_id, run_dir=tmp_path / run_id, job=job.to_dict())
        store.set_status("cancelled", RunStatus.CANCELLED)
        # The worker read the zip from its extraction folder inside the run folder.
        report = {
            "run": {"id": "finished"},
            "reference": {"path": "/m/net.keras"},
            "dataset": {"path": str(tmp_path / "finished" / "data"), "file": data_zip},
            "variants": [],
        }
        store.sync_report("finished", report)
        store.set_status("finished", RunStatus.DONE)
        finished, cancelled = store.get_run("finished"), store.get_run("cancelled")
    finally:
        store.close()
    assert finished is not None and cancelled is not None
    assert finished.data_path == cancelled.data_path == data_zip
