"""Setup's inputs: allowed roots checked before Run, zipped data sets read one way, the form kept."""

from __future__ import annotations

import io
import json
import shutil
import time
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from core.jobs import launch as jobs
from tests.app.conftest import OpenPage
from tests.app.fixtures import CLASSES, build_data
from ui import keys

UPLOAD = "Upload .zip"


def _no_demo(home: Path) -> None:
    (home / "demo-build.pid").write_text("999999")  # a dead build: the demo is "failed"


def _zip_bytes(folder: Path, *, prefix: str) -> bytes:
    """The files under `folder` zipped under `prefix/` ("" zips them at the archive's root)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{prefix}{path.relative_to(folder).as_posix()}")
    return buffer.getvalue()


def _csv_data_set(root: Path) -> Path:
    """40 labelled PNGs, data.csv (filepath,label) and labels.txt with the 10 class names."""
    build_data(root)
    (root / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def _errors(at) -> list[str]:  # type: ignore[no-untyped-def]
    """Errors other than the one about the demo, which these tests do not build."""
    return [e.value for e in at.error if "demo could not be built" not in e.value]


def _metrics(at) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {m.label: m.value for m in at.metric}


# ---- QUANTLENS_ALLOWED_ROOTS ----------------------------------------------------------------


def test_a_path_outside_the_allowed_roots_is_refused_on_setup_before_run(
    home: Path, tmp_path: Path, open_page: OpenPage, monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    outside = tmp_path / "elsewhere"
    data = _csv_data_set(outside)
    monkeypatch.setenv("QUANTLENS_ALLOWED_ROOTS", str(allowed))
    _no_demo(home)
    at = open_page("setup")
    at.radio(key=keys.SETUP_DATA_SOURCE).set_value("CSV file on the server").run()
    at.text_input(key=keys.SETUP_DATA_PATH).input(str(data / "data.csv")).run()
    errors = [e.value for e in at.error if "data.csv" in e.value]
    assert len(errors) == 1 and "\n" not in errors[0]
    assert "outside the allowed folders" in errors[0] and str(allowed) in errors[0]
    assert "QUANTLENS_ALLOWED_ROOTS" in errors[0]
    assert "Samples" not in _metrics(at)  # nothing outside the roots was read
    # a labels file outside the roots is refused too, even next to an allowed data set
    inside = _csv_data_set(allowed / "set")
    at.text_input(key=keys.SETUP_DATA_PATH).input(str(inside / "data.csv")).run()
    at.text_input(key=keys.SETUP_LABELS_PATH).input(str(outside / "labels.txt")).run()
    errors = [e.value for e in at.error if "labels.txt" in e.value]
    assert len(errors) == 1 and "labels file" in errors[0]
    assert "outside the allowed folders" in errors[0]
    assert "Samples" not in _metrics(at)
    assert at.button(key=keys.SETUP_RUN).disabled


def test_an_upload_is_allowed_with_roots_set_to_an_unrelated_folder(
    home: Path, tmp_path: Path, open_page: OpenPage, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "unrelated").mkdir()
    monkeypatch.setenv("QUANTLENS_ALLOWED_ROOTS", str(tmp_path / "unrelated"))
    _no_demo(home)
    payload = _zip_bytes(_csv_data_set(tmp_path / "set"), prefix="")
    at = open_page("setup")
    at.radio(key=keys.SETUP_DATA_SOURCE).set_value(UPLOAD).run()
    at.file_uploader(key=keys.SETUP_DATA_UPLOAD).upload("set.zip", payload).run()
    assert not _errors(at)
    assert _metrics(at)["Samples"] == "40"


@pytest.mark.slow
def test_the_demo_runs_with_roots_set_to_an_unrelated_folder(
    fresh_demo_home: Path, tmp_path: Path, open_page: OpenPage, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "unrelated").mkdir()
    monkeypatch.setenv("QUANTLENS_ALLOWED_ROOTS", str(tmp_path / "unrelated"))
    at = open_page("setup", timeout=180)
    assert not at.error, [e.value for e in at.error]
    at.multiselect(key=keys.SETUP_MODES).set_value(["float16"]).run()
    at.number_input(key=keys.SETUP_MAX_SAMPLES).set_value(64).run()
    at.button(key=keys.SETUP_RUN).click().run(timeout=60)
    rid = at.session_state[keys.SELECTED_RUN]
    deadline = time.time() + 300
    while jobs.active_run_id() is not None and time.time() < deadline:
        time.sleep(2)
    status = jobs.read_status(fresh_demo_home / "runs" / rid)
    assert status["status"] == "done", status


# ---- zipped data sets -----------------------------------------------------------------------


def test_root_and_wrapper_zips_of_a_csv_data_set_read_the_same_on_setup(
    home: Path, tmp_path: Path, open_page: OpenPage
) -> None:
    folder = _csv_data_set(tmp_path / "digits48")
    labels = pd.read_csv(folder / "data.csv")["label"]
    seen = {}
    for name, prefix in (("root.zip", ""), ("wrapped.zip", "digits48/")):
        _no_demo(home)
        at = open_page("setup")
        at.radio(key=keys.SETUP_DATA_SOURCE).set_value(UPLOAD).run()
        at.file_uploader(key=keys.SETUP_DATA_UPLOAD).upload(
            name, _zip_bytes(folder, prefix=prefix)
        ).run()
        assert not _errors(at)
        assert not at.warning, [w.value for w in at.warning]
        seen[name] = _metrics(at)
    expected = {"Samples": str(len(labels)), "Skipped": "0", "Classes": str(len(CLASSES))}
    assert seen["root.zip"] == seen["wrapped.zip"] == expected


def test_a_one_class_data_set_is_warned_about_on_setup(
    home: Path, tmp_path: Path, open_page: OpenPage
) -> None:
    folder = tmp_path / "cats"
    build_data(folder / "images" / "cat", n=4)  # one class folder of images
    (folder / "images" / "cat" / "data.csv").unlink()
    _no_demo(home)
    at = open_page("setup")
    at.radio(key=keys.SETUP_DATA_SOURCE).set_value("Image folder on the server").run()
    at.text_input(key=keys.SETUP_DATA_PATH).input(str(folder / "images")).run()
    assert _metrics(at)["Classes"] == "1"
    assert any("single class (cat)" in w.value for w in at.warning)


# ---- the form survives a reload ---------------------------------------------------------------


def test_a_reload_keeps_what_the_user_picked(
    home: Path, tmp_path: Path, open_page: OpenPage
) -> None:
    data = _csv_data_set(tmp_path / "set") / "data.csv"
    _no_demo(home)
    at = open_page("setup")
    at.radio(key=keys.SETUP_DATA_SOURCE).set_value("CSV file on the server").run()
    at.text_input(key=keys.SETUP_DATA_PATH).input(str(data)).run()
    at.multiselect(key=keys.SETUP_MODES).set_value(["float16", "int16x8"]).run()
    at.selectbox(key=keys.SETUP_PRESET).set_value("unit").run()
    at.number_input(key=keys.SETUP_CALIBRATION).set_value(250).run()
    at.slider(key=keys.SETUP_THRESHOLD).set_value(90.5).run()
    at.text_input(key=keys.SETUP_RUN_NAME).input("just this run").run()

    again = open_page("setup")  # a reload: a new session on the same server
    assert again.radio(key=keys.SETUP_DATA_SOURCE).value == "CSV file on the server"
    assert again.text_input(key=keys.SETUP_DATA_PATH).value == str(data)
    assert again.multiselect(key=keys.SETUP_MODES).value == ["float16", "int16x8"]
    assert again.selectbox(key=keys.SETUP_PRESET).value == "unit"
    assert again.number_input(key=keys.SETUP_CALIBRATION).value == 250
    assert again.slider(key=keys.SETUP_THRESHOLD).value == 90.5
    assert again.text_input(key=keys.SETUP_RUN_NAME).value == ""  # a run name is per run
    assert _metrics(again)["Samples"] == "40"  # the restored path is read again
    assert not again.warning  # no "value set via Session State API" warning


def test_back_from_another_page_the_form_is_as_the_user_left_it(
    home: Path, open_page: OpenPage
) -> None:
    _no_demo(home)
    at = open_page("setup")
    at.multiselect(key=keys.SETUP_MODES).set_value(["float16", "int8"]).run()
    at.slider(key=keys.SETUP_THRESHOLD).set_value(90.5).run()
    at.switch_page("views/overview.py").run()
    # What Streamlit did to a page switch that landed as a run ended: the widget's first value.
    at.session_state[keys.SETUP_MODES] = ["float32", "dynamic", "float16", "int8"]
    at.session_state[keys.SETUP_THRESHOLD] = 95.0
    at.switch_page("views/setup.py").run()
    assert at.multiselect(key=keys.SETUP_MODES).value == ["float16", "int8"]
    assert at.slider(key=keys.SETUP_THRESHOLD).value == 90.5
    # On Setup itself the user's own change is kept, and becomes what a return restores.
    at.multiselect(key=keys.SETUP_MODES).set_value(["int8"]).run()
    assert at.multiselect(key=keys.SETUP_MODES).value == ["int8"]
    at.switch_page("views/history.py").run()
    at.switch_page("views/setup.py").run()
    assert at.multiselect(key=keys.SETUP_MODES).value == ["int8"]
    assert not at.exception and not at.warning


def test_a_reload_keeps_the_uploaded_data_set(
    home: Path, tmp_path: Path, open_page: OpenPage
) -> None:
    payload = _zip_bytes(_csv_data_set(tmp_path / "set"), prefix="set/")
    _no_demo(home)
    at = open_page("setup")
    at.radio(key=keys.SETUP_DATA_SOURCE).set_value(UPLOAD).run()
    at.file_uploader(key=keys.SETUP_DATA_UPLOAD).upload("set.zip", payload).run()
    assert _metrics(at)["Samples"] == "40"

    again = open_page("setup")  # a reload: the browser's uploader is empty again
    assert again.radio(key=keys.SETUP_DATA_SOURCE).value == UPLOAD
    assert any("set.zip" in c.value and "uploaded earlier" in c.value for c in again.caption)
    assert _metrics(again) == _metrics(at)
    # once the upload is gone (cleaned up), the form no longer offers it
    shutil.rmtree(home / "uploads")
    third = open_page("setup")
    assert "Samples" not in _metrics(third)
    assert not _errors(third)


def test_a_reload_does_not_bring_back_a_refused_upload(home: Path, open_page: OpenPage) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("notes.txt", "no images and no CSV here")
    _no_demo(home)
    at = open_page("setup")
    at.radio(key=keys.SETUP_DATA_SOURCE).set_value(UPLOAD).run()
    at.file_uploader(key=keys.SETUP_DATA_UPLOAD).upload("notes.zip", buffer.getvalue()).run()
    refused = _errors(at)
    assert refused and "Samples" not in _metrics(at)

    again = open_page("setup")  # a reload: the uploader is empty; the refused file is gone
    assert again.radio(key=keys.SETUP_DATA_SOURCE).value == UPLOAD
    assert not _errors(again), _errors(again)
    assert not any("uploaded earlier" in c.value for c in again.caption)


def test_a_damaged_or_stale_saved_form_opens_with_defaults(home: Path, open_page: OpenPage) -> None:
    (home / "setup-form.json").write_text(
        json.dumps(
            {
                keys.SETUP_MODES: ["float16", "int3"],  # a mode that no longer exists
                keys.SETUP_THRESHOLD: "high",
                keys.SETUP_THREADS: 10**6,
                keys.SETUP_MODEL_SOURCE: "Demo model",  # not offered: the demo is not built
            }
        )
    )
    _no_demo(home)
    at = open_page("setup")
    assert at.multiselect(key=keys.SETUP_MODES).value == ["float32", "dynamic", "float16", "int8"]
    assert at.slider(key=keys.SETUP_THRESHOLD).value == 95.0
    assert at.radio(key=keys.SETUP_MODEL_SOURCE).value == "Path on the server"
    (home / "setup-form.json").write_text("{not json")
    assert not open_page("setup").exception
