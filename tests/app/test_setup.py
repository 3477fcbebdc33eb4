"""The Setup page: signature shown, one-line errors for bad inputs, Run launches a real job."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from core.jobs import launch as jobs
from tests.app.conftest import OpenPage
from ui import keys


def test_missing_server_paths_are_one_line_errors(home: Path, open_page: OpenPage) -> None:
    # no demo here and a dead build pid: the demo is "failed", so server paths are the default
    (home / "demo-build.pid").write_text("999999")
    at = open_page("setup")
    assert any("demo could not be built" in e.value for e in at.error)
    assert "Demo model" not in at.radio(key=keys.SETUP_MODEL_SOURCE).options
    at.text_input(key=keys.SETUP_MODEL_PATH).input(str(home / "nope.keras")).run()
    at.text_input(key=keys.SETUP_DATA_PATH).input(str(home / "nope.csv")).run()
    errors = [e.value for e in at.error]
    assert f"model path {home / 'nope.keras'} does not exist; check the path" in errors
    assert f"data set path {home / 'nope.csv'} does not exist; check the path" in errors
    assert at.button(key=keys.SETUP_RUN).disabled


@pytest.mark.slow
def test_garbage_keras_file_is_refused_with_one_line(home: Path, open_page: OpenPage) -> None:
    (home / "demo-build.pid").write_text("999999")
    bad = home / "random.keras"
    bad.write_bytes(b"\x00not a zip at all" * 64)
    at = open_page("setup", timeout=180)
    at.text_input(key=keys.SETUP_MODEL_PATH).input(str(bad)).run(timeout=180)
    errs = [e.value for e in at.error if "random.keras" in e.value]
    assert len(errs) == 1 and "\n" not in errs[0]
    assert not at.metric  # no signature shown for a broken model


@pytest.mark.slow
def test_demo_is_preselected_and_one_click_runs(fresh_demo_home: Path, open_page: OpenPage) -> None:
    at = open_page("setup", timeout=180)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Input"] == "32×32×3" and metrics["Classes"] == "10"
    assert metrics["Samples"] == str(
        len((fresh_demo_home / "demo/data/digits.csv").read_text().strip().splitlines()) - 1
    )
    assert len(at.get("image")) == 3  # the preset preview
    at.multiselect(key=keys.SETUP_MODES).set_value(["float16"]).run()
    run = at.button(key=keys.SETUP_RUN)
    assert not run.disabled
    run.click().run(timeout=60)
    rid = at.session_state[keys.SELECTED_RUN]
    assert (fresh_demo_home / "runs" / rid / "job.json").is_file()
    deadline = time.time() + 300
    while jobs.active_run_id() is not None and time.time() < deadline:
        time.sleep(2)
    assert jobs.read_status(fresh_demo_home / "runs" / rid)["status"] == "done"
    at.run(timeout=60)
    assert not at.button(key=keys.SETUP_RUN).disabled
    assert any("float16" in m.value and "done" in m.value for m in at.markdown)


def test_last_run_status_lists_each_variant_and_crash_reason(
    crafted: Path, open_page: OpenPage
) -> None:
    from tests.app.expected import contains_escaped, pct2
    from tests.app.fixtures import read_report

    (crafted.parents[1] / "demo-build.pid").write_text("999999")
    rep = read_report(crafted)
    at = open_page("setup")
    lines = [m.value for m in at.markdown]
    crashed = next(v for v in rep["variants"] if v["status"] == "crashed")
    assert any(
        contains_escaped(line, crashed["error"]) and line.startswith(":red[") for line in lines
    )
    int8 = next(v for v in rep["variants"] if v["name"] == "int8")
    assert any(
        "**int8**" in line and contains_escaped(line, pct2(int8["top1_agreement_pct"]))
        for line in lines
    )


def test_first_launch_waits_for_the_demo_build(home: Path, open_page: OpenPage) -> None:
    import os

    # a live pid and no demo yet: the build is in progress, two steps along
    (home / "demo-build.pid").write_text(str(os.getpid()))
    (home / "demo-build.log").write_text(
        "0.00 loading TensorFlow\n0.02 writing the digits as PNG files\n"
        "0.14 training epoch 1/10 (train accuracy 0.412)\n"
    )
    at = open_page("setup")
    [box] = [s for s in at.get("status") if "Building the demo model" in s.label]
    # What it is doing now, in the label a collapsed box still shows, and the steps done.
    assert box.label.endswith(": training epoch 1/10 (train accuracy 0.412)…")
    assert box.state == "running"  # not the green check a `with st.status` ends on
    done = [c.value for c in at.caption if ":material/check:" in c.value]
    assert len(done) == 2 and "loading TensorFlow" in done[0]
    assert [b.key for b in at.button] == [keys.SETUP_SKIP_DEMO_BUTTON]
    at.button(key=keys.SETUP_SKIP_DEMO_BUTTON).click().run()
    assert at.radio(key=keys.SETUP_MODEL_SOURCE).value == "Path on the server"
    assert at.button(key=keys.SETUP_RUN).disabled


def test_trusted_mode_is_off_unless_the_server_allows_it(
    home: Path, open_page: OpenPage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("QUANTLENS_ALLOW_TRUSTED", raising=False)
    (home / "demo-build.pid").write_text("999999")  # no demo build in this test
    at = open_page("setup")
    assert not [t for t in at.toggle if t.label == "Trusted model"]
    assert any("QUANTLENS_ALLOW_TRUSTED=1" in c.value for c in at.caption)


def test_trusted_mode_needs_a_per_run_confirmation(
    home: Path, open_page: OpenPage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ui import keys

    monkeypatch.setenv("QUANTLENS_ALLOW_TRUSTED", "1")
    (home / "demo-build.pid").write_text("999999")  # no demo build in this test
    at = open_page("setup", state={keys.SETUP_TRUSTED: True})
    assert [c for c in at.checkbox if c.key == keys.SETUP_TRUSTED_CONFIRM]
    assert any("not on until you confirm" in w.value for w in at.warning)
    at.checkbox(key=keys.SETUP_TRUSTED_CONFIRM).check().run()
    assert not any("not on until you confirm" in w.value for w in at.warning)


def test_setup_threads_default_leaves_a_core_for_the_server(
    home: Path, open_page: OpenPage
) -> None:
    import os

    (home / "demo-build.pid").write_text("999999")  # no demo: the form alone
    at = open_page("setup")
    assert at.number_input(key=keys.SETUP_THREADS).value == max(1, (os.cpu_count() or 1) - 1)
