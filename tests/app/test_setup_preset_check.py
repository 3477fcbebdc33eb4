"""Setup checks the preset once a model and data are chosen: the original runs under every
preset in a worker, and a clearly better preset than the default is pre-selected."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.app.conftest import OpenPage
from tests.core.conftest import write_tiny_images
from tests.core.test_preset_check import build_raw_input_model
from ui import keys

pytestmark = pytest.mark.slow


def test_setup_preselects_the_preset_the_check_finds_better(
    home: Path, tmp_path: Path, open_page: OpenPage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QUANTLENS_ALLOWED_ROOTS", str(tmp_path))
    (home / "demo-build.pid").write_text("999999")  # no demo: server paths are the default
    model = tmp_path / "raw_input.keras"
    build_raw_input_model().save(model)
    # 48 images: mobilenet_v2 gets 3 in 4 right on this model, raw all; 12 discordant pairs
    # make that clear (McNemar p = 0.0005), where 24 images (p = 0.03) would not.
    data = write_tiny_images(tmp_path / "data", per_class=12)

    at = open_page("setup", timeout=180)
    assert at.selectbox(key=keys.SETUP_PRESET).value == "mobilenet_v2"
    at.text_input(key=keys.SETUP_MODEL_PATH).input(str(model)).run()
    at.radio(key=keys.SETUP_DATA_SOURCE).set_value("CSV file on the server").run()
    at.text_input(key=keys.SETUP_DATA_PATH).input(str(data)).run()

    assert at.selectbox(key=keys.SETUP_PRESET).value == "raw"
    said = [i.value.replace("\\", "") for i in at.info]  # markdown escapes dropped
    assert any(
        "`raw` was selected instead of `mobilenet_v2`" in line and "raw 100.0 %" in line
        for line in said
    ), said
    assert not at.button(key=keys.SETUP_RUN).disabled

    # The user's own choice stands afterwards, and the check warns about it in one line.
    at.selectbox(key=keys.SETUP_PRESET).set_value("caffe").run()
    assert at.selectbox(key=keys.SETUP_PRESET).value == "caffe"
    warned = [w.value.replace("\\", "") for w in at.warning]
    assert any("accurate with preset raw but" in w and "with caffe" in w for w in warned), warned
    # ... also after a reload, which restores the form as the user left it.
    again = open_page("setup", timeout=180)
    assert again.selectbox(key=keys.SETUP_PRESET).value == "caffe"
