"""The conversion cache key covers everything that changes the produced bytes, the signature first."""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.engine.convert import SAVED_MODEL_DIR, TRACED_FUNCTION, cache_key
from core.types import ModelSignature, VariantSpec

pytestmark = pytest.mark.slow  # the key names the TensorFlow version, so it imports TensorFlow

SIGNATURE = ModelSignature(
    format="saved_model",
    input_shape=(None, 16, 16, 3),
    input_dtype="float32",
    height=16,
    width=16,
    channels=3,
    num_classes=4,
    outputs_probabilities=True,
    signature_key="probs",
    input_name="x",
    output_name="scores",
)
CALIBRATION = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)


def _key(variant: str = "int8", **changes: Any) -> str:
    base: dict[str, Any] = {
        "model_sha256": "a" * 64,
        "spec": VariantSpec.parse(variant),
        "calibration": CALIBRATION,
        "signature": SIGNATURE,
        "route": SAVED_MODEL_DIR,
        "preset": "mobilenet_v2",
    }
    return cache_key(**{**base, **changes})


def test_every_input_that_changes_the_bytes_changes_the_key() -> None:
    keys = {
        "base": _key(),
        "model": _key(model_sha256="b" * 64),
        "variant": _key(spec=VariantSpec.parse("int8-uint8")),
        "signature key": _key(signature=replace(SIGNATURE, signature_key="logits")),
        "input name": _key(signature=replace(SIGNATURE, input_name="image")),
        "output name": _key(signature=replace(SIGNATURE, output_name="logits")),
        "input dtype": _key(signature=replace(SIGNATURE, input_dtype="float16")),
        "height": _key(signature=replace(SIGNATURE, height=32)),
        "width": _key(signature=replace(SIGNATURE, width=32)),
        "channels": _key(signature=replace(SIGNATURE, channels=1)),
        "route": _key(route=TRACED_FUNCTION),
        "preset": _key(preset="unit"),
        "calibration": _key(calibration=CALIBRATION[::-1].copy()),
    }
    assert len(set(keys.values())) == len(keys), keys
    assert _key() == keys["base"]  # and it is stable


def test_modes_without_calibration_ignore_the_calibration_and_its_preset() -> None:
    base = _key("float16")
    assert _key("float16", preset="unit") == base
    assert _key("float16", calibration=None) == base
    assert _key("float16", calibration=CALIBRATION[:2]) == base
    # ...but not the things that still change their bytes.
    assert _key("float16", signature=replace(SIGNATURE, signature_key="logits")) != base
    assert _key("float16", route=TRACED_FUNCTION) != base


# -- two signatures of one SavedModel, through the job code, one shared cache ------------------
W = np.array([[2.0, -1.0, 0.5, 0.0], [-1.0, 2.0, 0.0, 0.5], [0.5, 0.0, 2.0, -1.0]], np.float32)
# The logits head ranks the classes in reverse: sharing a .tflite between the two would flip
# every answer.
W_REVERSED = W[:, ::-1].copy()


def _two_signature_model(path: Path) -> None:
    import tensorflow as tf

    class TwoHeads(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(W)
            self.w_reversed = tf.Variable(W_REVERSED)

        @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32, name="x")])
        def probs(self, x: Any) -> Any:
            return {"scores": tf.nn.softmax(4.0 * tf.reduce_mean(x, axis=[1, 2]) @ self.w)}

        @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32, name="x")])
        def logits(self, x: Any) -> Any:
            return {"logits": 4.0 * tf.reduce_mean(x, axis=[1, 2]) @ self.w_reversed}

    module = TwoHeads()
    tf.saved_model.save(
        module, str(path), signatures={"probs": module.probs, "logits": module.logits}
    )


def _expected(signature: str, csv_path: Path) -> np.ndarray:
    """The signature's probabilities on the data set, worked out here with numpy and Pillow."""
    from PIL import Image

    with csv_path.open(encoding="utf-8") as f:
        paths = [csv_path.parent / r["filepath"] for r in csv.DictReader(f)]
    # mobilenet_v2 preset: pixels / 127.5 - 1; the images are resized bilinearly to 16x16.
    pixels = np.stack(
        [
            np.asarray(Image.open(p).convert("RGB").resize((16, 16), Image.Resampling.BILINEAR))
            for p in paths
        ]
    )
    means = (pixels.astype(np.float64) / 127.5 - 1.0).mean(axis=(1, 2))
    z = 4.0 * means @ (W if signature == "probs" else W_REVERSED).astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True))


@pytest.mark.parametrize("first", ["probs", "logits"])
def test_two_signatures_never_share_a_cached_tflite(
    first: str, tiny_data: Path, tmp_path: Path
) -> None:
    from core.engine.pipeline import run_job
    from core.inputs import rundir
    from core.types import JobSpec, Preset

    _two_signature_model(tmp_path / "two_heads")
    cache = tmp_path / "cache"
    second = "logits" if first == "probs" else "probs"
    reports = {}
    for signature in (first, second):
        run_dir = tmp_path / signature
        run_dir.mkdir()
        job = JobSpec(
            model_path=str(tmp_path / "two_heads"),
            data_path=str(tiny_data),
            variants=("float32", "int8"),
            preset=Preset.MOBILENET_V2,
            signature_key=signature,
            latency_runs=2,
            warmup_runs=1,
        )
        run_job(job, run_dir, progress=lambda _event: None, cache_dir=cache)
        reports[signature] = rundir.read_json(run_dir / rundir.REPORT)

    for signature, report in reports.items():
        assert report["reference"]["softmax_applied"] is (signature == "logits")
        expected = _expected(signature, tiny_data)
        np.testing.assert_allclose(
            np.load(tmp_path / signature / "reference.probs.npy"), expected, atol=1e-4
        )
        for variant in report["variants"]:
            assert variant["status"] == "done", variant["error"]
            assert variant["conversion_cached"] is False, (signature, variant["name"])
            assert variant["top1_agreement_pct"] == 100.0, (signature, variant["name"])
            probs = np.load(tmp_path / signature / f"{variant['name']}.probs.npy")
            tolerance = 1e-5 if variant["name"] == "float32" else 0.05
            np.testing.assert_allclose(probs, expected, atol=tolerance)
    for name in ("float32", "int8"):
        assert (tmp_path / first / f"{name}.tflite").read_bytes() != (
            tmp_path / second / f"{name}.tflite"
        ).read_bytes()
    assert len(list(cache.glob("*.tflite"))) == 4
