"""The MobileNetV2-0.35 demo, for real (slow): its detached build goes missing -> building ->
ready with a real 1-epoch training, and an --auto-fix run on it is checked by an independent
evaluation: the `.tflite` files in ai_edge_litert against the original Keras model, on images
decoded here with Pillow, not by QuantLens' runner, decoder or metrics."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.inputs.demo_paths import demo_paths, mobilenet_demo_paths
from core.jobs.demo_jobs import MOBILENET, build_files, demo_build_state, start_demo_build

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with the digits and a MobileNetV2 demo trained for 1 epoch by its worker."""
    pytest.importorskip("sklearn")
    from core.engine.demo_models import write_digit_images

    home = tmp_path_factory.mktemp("mnv2_home")
    write_digit_images(demo_paths(home).data_csv.parent)  # the small demo's data, no model
    assert demo_build_state(home=home, which=MOBILENET) == ("missing", "")
    start_demo_build(home=home, which=MOBILENET, epochs=1)
    state, _ = demo_build_state(home=home, which=MOBILENET)
    assert state in ("building", "ready")
    deadline = time.monotonic() + 900
    while state == "building" and time.monotonic() < deadline:
        time.sleep(2)
        state, _ = demo_build_state(home=home, which=MOBILENET)
    log = build_files(MOBILENET, home=home)[0].read_text(encoding="utf-8", errors="replace")
    assert state == "ready", log[-2000:]
    assert "training epoch 1/1" in log
    return home


def test_the_build_writes_a_standard_mobilenet_v2_and_keeps_the_data(built: Path) -> None:
    import keras

    paths = mobilenet_demo_paths(built)
    assert (paths.saved_model / "saved_model.pb").is_file()
    model = keras.saving.load_model(paths.keras_model)
    assert model.name.startswith("mobilenetv2_0.35_96")
    assert tuple(model.input_shape) == (None, 96, 96, 3)
    assert tuple(model.output_shape) == (None, 10)
    norms = [la for la in model.layers if isinstance(la, keras.layers.BatchNormalization)]
    assert len(norms) > 50 and all(la.momentum == pytest.approx(0.9) for la in norms)
    accuracy = float((paths.root / "ACCURACY").read_text())
    assert 0.0 <= accuracy <= 1.0
    assert (paths.root / "EPOCHS").read_text().strip() == "1"
    assert paths.data_csv == demo_paths(built).data_csv  # the small demo's digits, untouched


def _decode(path: Path) -> np.ndarray:
    """8x8 grey PNG -> RGB, bilinear to 96x96, x / 127.5 - 1 (the mobilenet_v2 preset)."""
    from PIL import Image

    image = Image.open(path).convert("RGB").resize((96, 96), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


def _tflite_top1(model: Path, images: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    top1 = []
    for image in images:
        x: Any = image[np.newaxis]
        if inp["dtype"] != np.float32:  # integer I/O: quantize as TFLite's QUANTIZE op does
            scale, zero = inp["quantization"]
            # std::round: halves away from zero (np.round's halves-to-even would move every
            # pixel here, since the mobilenet_v2 preset puts them on exact halves of the scale)
            v = x.astype(np.float64) / scale
            q = np.where(v >= 0, np.floor(v + 0.5), np.ceil(v - 0.5)) + zero
            info = np.iinfo(inp["dtype"])
            x = np.clip(q, info.min, info.max).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        # argmax is unchanged by an increasing dequantization, so raw outputs suffice
        top1.append(int(np.argmax(interpreter.get_tensor(out["index"])[0])))
    return np.asarray(top1)


def independent_agreements(run: Path, keras_model: Path, data_dir: Path) -> dict[str, int]:
    """Disagreements with the Keras model of every evaluated variant, recomputed from files."""
    import keras

    with (run / "samples.csv").open(encoding="utf-8") as f:
        relpaths = [row["relpath"] for row in csv.DictReader(f)]
    images = np.stack([_decode(data_dir / r) for r in relpaths])
    reference = np.argmax(keras.saving.load_model(keras_model).predict(images, verbose=0), axis=1)
    report = json.loads((run / "report.json").read_text())
    return {
        v["name"]: int(np.sum(_tflite_top1(run / f"{v['name']}.tflite", images) != reference))
        for v in report["variants"]
        if v["status"] == "done"
    }


def test_auto_fix_on_the_demo_is_reproduced_by_an_independent_evaluation(
    built: Path, tmp_path: Path
) -> None:
    paths = mobilenet_demo_paths(built)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "core", "run", str(paths.saved_model)]
    command += ["--data", str(paths.data_csv), "--modes", "int8", "--samples", "120"]
    command += ["--auto-fix", "2", "--min-agreement", "100", "--out", str(out)]
    env = dict(os.environ, QUANTLENS_HOME=str(built), TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode in (0, 1), done.stderr[-3000:]  # 1: a variant below the bar

    report = json.loads((out / "report.json").read_text())
    variants = {v["name"]: v for v in report["variants"]}
    derived = [v for v in variants.values() if v.get("parent") == "int8"]
    assert variants["int8"]["status"] == "done"
    if variants["int8"]["disagreements"] == 0:
        assert not derived  # nothing to fix: auto-fix must not invent a variant
    else:  # a variant only when a rung beat int8 on the images that chose it
        search = variants["int8"]["auto_fix"]["search"]
        assert len(derived) == int(search["chosen"] is not None)
        for d in derived:
            assert d["name"] == search["chosen"] and len(d["float_layers"]) <= 2
            chosen = next(c for c in search["candidates"] if c["variant"] == d["name"])
            assert chosen["agreement_pct"] > search["parent_agreement_pct"]
    recomputed = independent_agreements(out, paths.keras_model, paths.data_csv.parent)
    for name, disagreements in recomputed.items():
        entry = variants[name]
        assert entry["n"] == 120
        assert entry["disagreements"] == disagreements, name
        assert entry["top1_agreement_pct"] == pytest.approx(100 * (120 - disagreements) / 120)
