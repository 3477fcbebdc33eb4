"""Setup's backend choice: `both` launches the converter and quantizer variants side by side and
the result pages show both int8s; a mode the chosen backend lacks is one line, not a run."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from core.jobs import launch as jobs
from tests.app.conftest import OpenPage
from ui import keys

pytestmark = pytest.mark.slow


def test_int4w_on_the_converter_is_one_line_and_blocks_run(
    fresh_demo_home: Path, open_page: OpenPage
) -> None:
    at = open_page("setup", timeout=180)
    at.multiselect(key=keys.SETUP_MODES).set_value(["float16", "int4w"]).run()
    assert at.radio(key=keys.SETUP_BACKEND).value == "converter"
    errors = [e.value for e in at.error]
    assert (
        "int4w runs on the quantizer backend only; use int4w_q (--backend quantizer or both)"
        in errors
    )
    assert at.button(key=keys.SETUP_RUN).disabled


def test_both_backends_run_side_by_side(fresh_demo_home: Path, open_page: OpenPage) -> None:
    at = open_page("setup", timeout=180)
    at.multiselect(key=keys.SETUP_MODES).set_value(["int8", "int4w"]).run()
    at.radio(key=keys.SETUP_BACKEND).set_value("both").run()
    assert not at.error
    at.button(key=keys.SETUP_RUN).click().run(timeout=60)
    rid = at.session_state[keys.SELECTED_RUN]
    run_dir = fresh_demo_home / "runs" / rid
    job = json.loads((run_dir / "job.json").read_text())
    assert job["variants"] == ["int8", "int8_q", "int4w_q"]
    deadline = time.time() + 400
    while jobs.active_run_id() is not None and time.time() < deadline:
        time.sleep(2)
    assert jobs.read_status(run_dir)["status"] == "done"
    report = json.loads((run_dir / "report.json").read_text())
    backends = {v["name"]: v["backend"] for v in report["variants"]}
    # float32 joins as the pivot of the conversion/quantization split, on the converter.
    assert backends == {
        "int8": "converter",
        "int8_q": "quantizer",
        "int4w_q": "quantizer",
        "float32": "converter",
    }

    overview = open_page("overview", state={keys.SELECTED_RUN: rid})
    headings = [m.value for m in overview.markdown]
    # Markdown escapes the underscore, so the page shows `int8_q`.
    assert "#### int8" in headings and "#### int8\\_q" in headings
    latency = open_page("latency", state={keys.SELECTED_RUN: rid})
    assert list(latency.dataframe[0].value["model"]) == [
        "original",
        "int8",
        "int8_q",
        "int4w_q",
        "float32",
    ]
