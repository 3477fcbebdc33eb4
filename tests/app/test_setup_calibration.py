"""Setup's calibration choices: a separate set's path (checked) and calibrating on evaluated
images too; both reach the job the Run button launches."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.jobs import launch as jobs
from tests.app.conftest import OpenPage
from ui import keys


def test_a_missing_calibration_set_is_a_one_line_error_and_blocks_run(
    home: Path, open_page: OpenPage
) -> None:
    (home / "demo-build.pid").write_text("999999")  # no demo: nothing else is preselected
    at = open_page("setup")
    missing = home / "calibration.csv"
    at.text_input(key=keys.SETUP_CALIBRATION_DATA).input(str(missing)).run()
    assert f"{missing} does not exist; give the path of a CSV, folder or .zip of images." in [
        e.value for e in at.error
    ]
    assert at.button(key=keys.SETUP_RUN).disabled
    assert any("an existing separate calibration set" in c.value for c in at.caption)
    # With a separate set named, "calibrate on evaluated images too" does not apply.
    assert at.checkbox(key=keys.SETUP_CALIBRATION_OVERLAP).disabled


def test_sweep_sizes_that_are_not_whole_numbers_are_one_line_and_block_run(
    home: Path, open_page: OpenPage
) -> None:
    (home / "demo-build.pid").write_text("999999")  # no demo: nothing else is preselected
    at = open_page("setup")
    assert at.text_input(key=keys.SETUP_SWEEP).value == ""  # no sweep unless asked for
    assert at.number_input(key=keys.SETUP_SWEEP_SEEDS).value == 3
    at.text_input(key=keys.SETUP_SWEEP).input("10, fifty").run()
    assert _sweep_errors(at) == [
        "calibration sweep sizes are whole numbers such as 10,25,50,100; got '10, fifty'."
    ]
    assert at.button(key=keys.SETUP_RUN).disabled
    assert any("sweep sizes such as 10,50,100, or none" in c.value for c in at.caption)
    at.text_input(key=keys.SETUP_SWEEP).input("0,10").run()
    assert _sweep_errors(at) == [
        "calibration sweep sizes are at least 1, such as 10,25,50,100; got '0,10'."
    ]
    at.text_input(key=keys.SETUP_SWEEP).input("50,10").run()
    assert _sweep_errors(at) == []
    assert not any("sweep sizes" in c.value for c in at.caption)


def _sweep_errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error if "sweep" in e.value]


@pytest.mark.slow
def test_the_calibration_choices_reach_the_launched_job(
    fresh_demo_home: Path, open_page: OpenPage
) -> None:
    at = open_page("setup", timeout=180)
    at.multiselect(key=keys.SETUP_MODES).set_value(["float16"]).run()
    calibration_set = fresh_demo_home / "demo" / "data" / "digits.csv"
    at.text_input(key=keys.SETUP_CALIBRATION_DATA).input(str(calibration_set)).run()
    at.text_input(key=keys.SETUP_SWEEP).input("8, 4").run()
    at.number_input(key=keys.SETUP_SWEEP_SEEDS).set_value(1).run()
    at.button(key=keys.SETUP_RUN).click().run(timeout=60)
    rid = at.session_state[keys.SELECTED_RUN]
    job = json.loads((fresh_demo_home / "runs" / rid / "job.json").read_text())
    assert job["calibration_data"] == str(calibration_set.resolve())
    assert job["calibration_overlap"] is False
    assert (job["calibration_sweep"], job["sweep_seeds"]) == ([4, 8], 1)
    deadline = time.time() + 300
    while jobs.active_run_id() is not None and time.time() < deadline:
        time.sleep(2)
    assert jobs.read_status(fresh_demo_home / "runs" / rid)["status"] == "done"
    report = json.loads((fresh_demo_home / "runs" / rid / "report.json").read_text())
    int8 = report["sweep"]["modes"]["int8"]["points"]
    assert [(p["size"], p["seed"]) for p in int8] == [(4, 1), (8, 1)]
    assert all((fresh_demo_home / "runs" / rid / p["file"]).is_file() for p in int8)
