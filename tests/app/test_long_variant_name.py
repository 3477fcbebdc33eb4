"""A variant keeping twelve long-named layers in float: a real CLI run writes its files under a
short file_id (its name is longer than a file name may be), and the pages open on that run."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from core.reporting.results import load_results
from tests.app.conftest import OpenPage
from tests.core.conftest import TINY_CLASSES, TINY_SIZE, unlabelled_copy, write_tiny_images
from tests.core.test_cli import run_cli
from ui import keys

pytestmark = pytest.mark.slow

LAYERS = tuple(f"feature_extractor_block_{i:02d}_conv" for i in range(12))
NAME_MAX = os.pathconf("/", "PC_NAME_MAX")


def _deep_model(path: Path) -> Path:
    """Twelve small convolutions with long names, pooled into a softmax head."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(3)
    inputs = keras.Input((TINY_SIZE, TINY_SIZE, 3), name="image")
    x = inputs
    for name in LAYERS:
        x = layers.Conv2D(4, 3, padding="same", activation="relu", name=name)(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(TINY_CLASSES, activation="softmax", name="scores")(x)
    keras.Model(inputs, outputs).save(path)
    return path


def test_twelve_kept_layers_run_under_a_short_file_id_and_the_pages_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, open_page: OpenPage
) -> None:
    home = tmp_path / "ws"
    model = _deep_model(tmp_path / "deep.keras")
    labelled = write_tiny_images(tmp_path / "images")
    data = unlabelled_copy(labelled, tmp_path / "unlabelled")  # random weights: no labels
    long_name = "int8:keep=" + "+".join(LAYERS)
    assert len(long_name) > NAME_MAX  # as a file name it could not be created
    done = run_cli(
        "run",
        str(model),
        "--data",
        str(data),
        "--modes",
        f"int8,{long_name}",
        "--calibration-samples",
        "8",
        "--latency-runs",
        "2",
        "--min-agreement",
        "0",
        home=home,
    )
    assert done.returncode == 0, done.stderr
    run_dir = next((home / "runs").iterdir())
    report = json.loads((run_dir / "report.json").read_text())
    by_name = {v["name"]: v for v in report["variants"]}
    kept = by_name[long_name]
    assert kept["status"] == "done", kept.get("error")
    assert kept["float_layers"] == list(LAYERS)
    # Plain variants keep their names as file ids; the long one gets mode + hash.
    assert by_name["int8"]["file_id"] == "int8" and by_name["float32"]["file_id"] == "float32"
    assert kept["file_id"].startswith("int8-k") and len(kept["file_id"]) < 20
    for suffix in (".tflite", ".samples.csv", ".probs.npy", ".latency.npy", ".layers.csv"):
        assert (run_dir / f"{kept['file_id']}{suffix}").is_file(), suffix
    assert kept["size_bytes"] == (run_dir / f"{kept['file_id']}.tflite").stat().st_size
    assert kept["diagnosis"]["table"] == f"{kept['file_id']}.layers.csv"
    assert all(len(p.name) <= NAME_MAX for p in run_dir.rglob("*"))
    # The CLI table summarises the name instead of printing 400 characters.
    shown = f"int8:keep={LAYERS[0]} … and 11 more"
    assert shown in done.stdout
    assert LAYERS[11] not in done.stdout
    assert f"{shown}: " in done.stderr  # the finished variant's progress line, summarised too

    monkeypatch.setenv("QUANTLENS_HOME", str(home))
    overview = open_page("overview")
    headings = [m.value.replace("\\", "") for m in overview.markdown if m.value.startswith("####")]
    assert any(shown in h for h in headings)
    assert not any(LAYERS[11] in h for h in headings)
    # Layers opens on the run (its first diagnosed variant) and offers the long one, summarised.
    layers_page = open_page("layers")
    assert shown in [
        o.replace("\\", "") for o in layers_page.selectbox(key=keys.LAYERS_VARIANT).options
    ]
    assert layers_page.get("plotly_chart")
    # Every reader finds the long variant's files through its file id.
    res = load_results(run_dir)
    with (run_dir / f"{kept['file_id']}.layers.csv").open(encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert table and res.layer_rows(long_name) == table
    assert res.layer_details(long_name) is not None
    assert len(res.variant_samples(long_name)) == kept["n"]
    assert res.probs(long_name) is not None and res.latency(long_name) is not None
    gallery = open_page("disagreements", state={keys.DISAGREE_VARIANT: long_name})
    assert gallery.selectbox(key=keys.DISAGREE_VARIANT).value == long_name
