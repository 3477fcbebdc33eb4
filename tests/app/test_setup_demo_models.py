"""Setup with the two demo models: the MobileNetV2-0.35 build's status (building, failed,
missing) shows under the model while the small demo stays preselected and runnable, and once
it is built a "Demo model" choice offers it.

The workspace holds the real digit images and stand-in model files with their signatures
cached (as a finished build leaves them), so no test here starts TensorFlow or trains.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from core.engine.demo_models import write_digit_images
from core.inputs.demo_paths import DemoPaths, demo_paths, mobilenet_demo_paths
from core.runfolder import protocol
from tests.app.conftest import OpenPage
from tests.app.expected import contains_escaped
from ui import keys

pytest.importorskip("sklearn")


def _stand_in_model(paths: DemoPaths, size: int) -> None:
    """Model files a build would leave, and the signature the worker would have cached."""
    paths.saved_model.mkdir(parents=True, exist_ok=True)
    (paths.saved_model / "saved_model.pb").write_bytes(b"stand-in")
    paths.keras_model.write_bytes(b"stand-in")
    cache = protocol.signature_cache_file(str(paths.run_model))
    assert cache is not None
    cache.parent.mkdir(parents=True, exist_ok=True)
    signature = {
        "format": "saved_model",
        "input_shape": [None, size, size, 3],
        "input_dtype": "float32",
        "height": size,
        "width": size,
        "channels": 3,
        "num_classes": 10,
        "outputs_probabilities": True,
        "signature_key": "serving_default",
        "input_name": "input",
        "output_name": "output",
    }
    cache.write_text(json.dumps(signature), encoding="utf-8")


@pytest.fixture
def small_demo(home: Path) -> Path:
    small = demo_paths(home)
    write_digit_images(small.data_csv.parent)
    _stand_in_model(small, 32)
    return home


def _build_files(home: Path, log: str, pid: int | str) -> None:
    (home / "demo-mobilenetv2-build.log").write_text(log, encoding="utf-8")
    (home / "demo-mobilenetv2-build.pid").write_text(str(pid), encoding="utf-8")


def _model_caption(at: object) -> str:
    return next(c.value for c in at.caption if c.value.startswith("Embedded demo classifier"))  # type: ignore[attr-defined]


def test_building_status_shows_while_the_small_demo_runs(
    small_demo: Path, open_page: OpenPage
) -> None:
    _build_files(
        small_demo,
        "0.05 training epoch 0/6\n0.47 training epoch 3/6 (train accuracy 0.827)\n",
        os.getpid(),  # a live process: the build is running
    )
    at = open_page("setup")
    infos = [i.value for i in at.info]
    assert any(
        "Building the MobileNetV2-0.35 demo in the background: training epoch 3/6" in i
        for i in infos
    ), infos
    assert at.radio(key=keys.SETUP_MODEL_SOURCE).value == "Demo model"
    assert not at.get("radio") or keys.SETUP_DEMO_MODEL not in [r.key for r in at.radio]
    assert str(small_demo / "demo" / "model" / "saved_model") in _model_caption(at)
    assert {m.label: m.value for m in at.metric}["Input"] == "32×32×3"
    assert not at.button(key=keys.SETUP_RUN).disabled


def test_failed_build_says_why_and_keeps_the_small_demo(
    small_demo: Path, open_page: OpenPage
) -> None:
    _build_files(
        small_demo,
        "0.05 training epoch 0/6\nRuntimeError: the MobileNetV2 demo reached only 11.0% held-out accuracy\n",
        "999999",  # gone, and no model: the build failed
    )
    at = open_page("setup")
    warnings = [w.value for w in at.warning]
    assert any(
        w.startswith("The MobileNetV2-0.35 demo could not be built: ")
        and contains_escaped(w, "RuntimeError: the MobileNetV2 demo reached only 11.0% held-out")
        for w in warnings
    ), warnings
    assert "Retry" in at.button(key=keys.SETUP_BUILD_MOBILENET).label
    assert not at.error
    assert str(small_demo / "demo" / "model" / "saved_model") in _model_caption(at)
    assert not at.button(key=keys.SETUP_RUN).disabled


def test_missing_build_is_offered(small_demo: Path, open_page: OpenPage) -> None:
    at = open_page("setup")
    assert at.button(key=keys.SETUP_BUILD_MOBILENET).label.startswith(
        "Build the MobileNetV2-0.35 demo"
    )
    assert not at.button(key=keys.SETUP_RUN).disabled


def test_ready_mobilenet_is_a_choice_and_the_small_one_stays_preselected(
    small_demo: Path, open_page: OpenPage
) -> None:
    _stand_in_model(mobilenet_demo_paths(small_demo), 96)
    at = open_page("setup")
    choice = at.radio(key=keys.SETUP_DEMO_MODEL)
    assert list(choice.options) == ["Small (32×32)", "MobileNetV2-0.35 (96×96)"]
    assert choice.value == "Small (32×32)"
    assert not at.button(key=keys.SETUP_RUN).disabled
    assert not [b for b in at.button if b.key == keys.SETUP_BUILD_MOBILENET]

    choice.set_value("MobileNetV2-0.35 (96×96)").run()
    assert str(small_demo / "demo" / "mobilenetv2" / "saved_model") in _model_caption(at)
    assert {m.label: m.value for m in at.metric}["Input"] == "96×96×3"
    assert not at.button(key=keys.SETUP_RUN).disabled


def test_ready_outlier_demo_is_a_choice(small_demo: Path, open_page: OpenPage) -> None:
    from core.inputs.demo_paths import outlier_demo_paths

    _stand_in_model(outlier_demo_paths(small_demo), 16)
    at = open_page("setup")
    choice = at.radio(key=keys.SETUP_DEMO_MODEL)
    assert list(choice.options) == ["Small (32×32)", "Outlier channel (16×16)"]
    assert choice.value == "Small (32×32)"
    choice.set_value("Outlier channel (16×16)").run()
    # The .keras file: the fix ladder's equalization needs Keras layers.
    assert str(small_demo / "demo" / "outlier" / "digits_outlier.keras") in _model_caption(at)
    assert {m.label: m.value for m in at.metric}["Input"] == "16×16×3"
    assert not at.button(key=keys.SETUP_RUN).disabled
