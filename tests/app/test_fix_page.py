"""The Layers page as the fix page, on a real run of the embedded outlier-channel demo: the cause
in words with its per-channel evidence, the fix ladder, and one rung's button re-scoring it into
the run, after which the new variant is on Overview, Compare and History."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.inputs import rundir
from core.inputs.demo_paths import demo_paths, outlier_demo_paths
from tests.app.conftest import ROOT
from tests.app.history_fixtures import copy_workspace
from tests.app.outlier_fixtures import CALIBRATION, KEEP_CHAIN, outlier_run_home
from ui import keys

pytestmark = pytest.mark.slow


@pytest.fixture
def outlier_home(
    demo_home: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """A private copy of the outlier run's workspace (the test re-scores into it)."""
    home = copy_workspace(outlier_run_home(demo_home / "demo", tmp_path_factory), tmp_path / "ws")
    monkeypatch.setenv("QUANTLENS_HOME", str(home))
    return home


def _report(home: Path) -> dict:  # type: ignore[type-arg]
    (path,) = (home / "runs").glob("*/report.json")
    return json.loads(path.read_text(encoding="utf-8"))  # type: ignore[no-any-return]


def _text(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    parts += [" ".join(map(str, d.value.to_numpy().ravel())) for d in at.dataframe]
    return " ".join(parts).replace("\\", "")  # markdown escapes off: the text a user reads


def _open(page: str, state: dict[str, object] | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)
    for k, v in (state or {}).items():
        at.session_state[k] = v
    at.switch_page(f"views/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_cause_is_in_words_with_each_channels_range(outlier_home: Path) -> None:
    import keras

    at = _open("layers", {keys.LAYERS_VARIANT: "int8"})
    text = _text(at)
    assert "Outlier activation channel" in text
    assert "conv2 → pool2 → conv3: one channel spans" in text
    chart = next(
        json.loads(c.proto.spec)
        for c in at.get("plotly_chart")
        if "per channel" in json.loads(c.proto.spec)["layout"]["title"]["text"]
    )
    bars = chart["data"][0]
    assert chart["layout"]["yaxis"]["title"]["text"].startswith("max |activation| (float units")
    assert chart["layout"]["xaxis"]["title"]["text"] == "output channel (index)"
    # Independently: the Keras model's ReLU output after conv2 (the quantized tensor is conv2
    # with its ReLU fused), max |a| per channel, on the run's calibration images (its
    # calibration.csv, in order), 50 of them evenly spaced as the diagnosis documents.
    from core.inputs.images import decode_image
    from core.inputs.presets import apply_preset
    from core.types import Preset

    (run_dir,) = (outlier_home / "runs").iterdir()
    with (run_dir / "calibration.csv").open(encoding="utf-8") as f:
        relpaths = [row["relpath"] for row in csv.DictReader(f)]
    root = demo_paths(outlier_home).data_csv.parent
    size = 16
    decoded = np.stack(
        [decode_image(root / r, height=size, width=size, channels=3) for r in relpaths]
    )
    images = apply_preset(decoded, Preset.MOBILENET_V2)
    picked = images[np.linspace(0, len(images) - 1, CALIBRATION).round().astype(int)]
    model = keras.models.load_model(outlier_demo_paths(outlier_home).keras_model)
    probe = keras.Model(model.inputs[0], model.get_layer("relu2").output)
    expected = np.abs(np.asarray(probe(picked))).max(axis=(0, 1, 2))
    np.testing.assert_allclose(bars["y"], expected, rtol=1e-3, atol=1e-3)
    # The outlier channel (red) is the one the demo's build blew up (its NOTE says which).
    note = (outlier_demo_paths(outlier_home).root / "NOTE").read_text(encoding="utf-8")
    channel = int(note.split("output channel ")[1].split()[0])
    from core.reporting.figures import FAIL_COLOR

    assert [c for c, colour in enumerate(bars["marker"]["color"]) if colour == FAIL_COLOR] == [
        channel
    ]


@pytest.mark.parametrize(
    ("kind", "variant"),
    [("equalize", "int8:eq"), ("keep_float", KEEP_CHAIN)],  # the integer-only fix, the float one
)
def test_a_rungs_button_rescores_it_into_the_run_on_every_page(
    outlier_home: Path, kind: str, variant: str
) -> None:
    at = _open("layers", {keys.LAYERS_VARIANT: "int8"})
    text = _text(at)
    for rung in ("Cross-layer equalization", "16-bit activations", "Keep in float"):
        assert rung in text
    (button,) = [b for b in at.button if b.key.endswith(f".{kind}")]
    assert not button.disabled
    button.click()
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (run_dir,) = (outlier_home / "runs").iterdir()
    for _ in range(900):  # a real conversion, evaluation and timing of the tiny model
        if rundir.read_json(run_dir / rundir.STATUS).get("status") not in ("queued", "running"):
            break
        time.sleep(0.5)
    assert rundir.read_json(run_dir / rundir.STATUS)["status"] == "done"
    report = _report(outlier_home)
    by_name = {v["name"]: v for v in report["variants"]}
    assert by_name[variant]["status"] == "done" and by_name[variant]["parent"] == "int8"
    # Whether it computes in integers only is recorded from its own .tflite (as LiteRT's tensor
    # types say), and its rung shows that instead of the expectation.
    from core.reporting.fix_ladder import ladders
    from core.reporting.runmodel import RunReport
    from tests.core.test_deployability import _float_tensors_inside

    recorded = by_name[variant]["deployability"]["integer_only"]["integer_only"]
    assert recorded is (kind == "equalize")
    tflite = rundir.tflite_path(run_dir, by_name_files(report, variant))
    assert recorded is not _float_tensors_inside(tflite)
    read = {v.name: v for v in RunReport.from_dict(report).variants}
    rungs = [r for ladder in ladders(read["int8"], list(read.values())) for r in ladder.rungs]
    assert next(r for r in rungs if r.variant == variant).integer_only is recorded

    # The rung now shows what it changed, against an independent count from the samples files.
    at = _open("layers", {keys.LAYERS_VARIANT: "int8"})
    samples = {
        name: np.loadtxt(
            rundir.variant_samples_path(run_dir, by_name_files(report, name)),
            delimiter=",",
            skiprows=1,
            usecols=3,  # agree
        )
        for name in ("int8", variant)
    }
    delta = 100 * (samples[variant].mean() - samples["int8"].mean())
    assert f"({delta:+.2f} pts, n = {len(samples['int8'])})" in _text(at)
    repaired = int(((samples["int8"] == 0) & (samples[variant] == 1)).sum())
    assert repaired > 0
    toggle = next(t for t in at.toggle if t.key.endswith(f".{kind}.repaired"))
    assert toggle.label.startswith(f"Show the {repaired} image")
    toggle.set_value(True).run()
    assert not at.exception

    overview = _open("overview")
    assert variant in _text(overview)
    run_id = report["run"]["id"]
    compare = _open("compare", {keys.COMPARE_ITEMS: [f"{run_id}/int8", f"{run_id}/{variant}"]})
    assert variant in _text(compare)
    # History finds the run by the new variant's name (its search covers variant names).
    history = _open("history", {keys.HISTORY_SEARCH: variant})
    assert list(history.dataframe[0].value["name"]) == ["outlier"]


def by_name_files(report: dict, name: str) -> object:  # type: ignore[type-arg]
    from core.reporting.runmodel import RunReport

    return RunReport.from_dict(report).files_of(name)


def test_every_cause_kind_has_a_title_on_the_fix_page() -> None:
    """A cause kind the engine can name gets its own heading, not the generic "Cause"."""
    from typing import get_args

    from core.engine.causes import CauseKind
    from ui.fix_page import CAUSE_TITLE

    assert set(get_args(CauseKind)) == set(CAUSE_TITLE)
