"""The LiteRT runner: broken files are one line; quantized I/O uses the tensors' own parameters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.engine.runtime import TFLiteRunner, check_tflite_bytes
from core.engine.tensors import quantize
from core.errors import InvalidTFLiteModel

NOT_A_FLATBUFFER = (
    "m.tflite is not a TFLite flatbuffer (no TFL3 identifier); give a .tflite file made by the "
    "TFLite converter"
)


def test_empty_bytes_are_refused() -> None:
    with pytest.raises(InvalidTFLiteModel) as info:
        check_tflite_bytes(b"", name="m.tflite")
    assert str(info.value) == "m.tflite is empty (0 bytes); convert the model again"


@pytest.mark.parametrize(
    "data",
    [b"hello, I am a text file pretending to be a model\n", b"TFL3", b"\x00" * 3],
    ids=["text", "identifier-only-at-start", "three-bytes"],
)
def test_text_and_junk_are_refused_by_the_runner(data: bytes) -> None:
    with pytest.raises(InvalidTFLiteModel) as info:
        TFLiteRunner(data, name="m.tflite")
    assert str(info.value) == NOT_A_FLATBUFFER


@pytest.fixture(scope="module")
def converted(tiny_models: dict[str, Path], tiny_data: Path) -> dict[str, Any]:
    """The tiny model as float32, int8 and int8-uint8 TFLite, plus 24 preprocessed images."""
    from core.engine.backends import tflite_from_reference
    from core.engine.models import load_reference, model_sha256
    from core.inputs.datasets import load_dataset
    from core.inputs.images import decode_image
    from core.inputs.presets import apply_preset
    from core.types import Preset, VariantSpec

    model = load_reference(tiny_models["keras"])
    samples = load_dataset(tiny_data).samples
    pixels = np.stack([decode_image(s.path, height=16, width=16, channels=3) for s in samples])
    images = apply_preset(pixels, Preset.MOBILENET_V2).astype(np.float32)
    sha = model_sha256(tiny_models["keras"])
    out: dict[str, Any] = {"images": images, "reference": model.predict(images)}
    for variant in ("float32", "int8", "int8-uint8"):
        out[variant] = tflite_from_reference(
            model, VariantSpec.parse(variant), model_sha256=sha, calibration=images
        ).tflite
    return out


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.01, 0.25, 0.5, 0.9, 0.999])
def test_truncated_flatbuffer_is_one_line(converted: dict[str, Any], fraction: float) -> None:
    data = converted["float32"]
    cut = data[: max(8, int(len(data) * fraction))]
    with pytest.raises(InvalidTFLiteModel) as info:
        TFLiteRunner(cut, name="cut.tflite")
    assert str(info.value) == (
        "cut.tflite cannot be read by LiteRT (The model is not a valid Flatbuffer buffer); the "
        "file is truncated or damaged"
    )


def _interpreter_io(tflite: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Input and output details as LiteRT itself reports them (independent of the runner)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite)
    return interpreter.get_input_details()[0], interpreter.get_output_details()[0]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["int8", "int8-uint8"])
def test_quantized_io_matches_float32_within_the_output_scale(
    converted: dict[str, Any], variant: str
) -> None:
    images = converted["images"]
    runner = TFLiteRunner(converted[variant], name=f"{variant}.tflite")
    float_runner = TFLiteRunner(converted["float32"], name="float32.tflite")
    inp, out = _interpreter_io(converted[variant])
    dtype = np.int8 if variant == "int8" else np.uint8
    assert inp["dtype"] == dtype and out["dtype"] == dtype
    assert runner.input_quantization == pytest.approx(inp["quantization"])
    assert runner.output_quantization == pytest.approx(out["quantization"])

    got = np.stack([runner.run(image) for image in images])
    want = np.stack([float_runner.run(image) for image in images])
    out_scale = out["quantization"][0]
    # Output rounding is half a step; the int8 activations inside add a few steps more.
    assert np.abs(got - want).max() <= 4 * out_scale
    # Dequantized before anything else: a softmax head's rows are distributions again, up to
    # half an output step per class.
    classes = int(out["shape"][-1])
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=classes * out_scale / 2)
    assert got.min() >= 0.0 and got.max() <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["int8", "int8-uint8"])
def test_input_is_quantized_with_the_tensors_own_parameters(
    converted: dict[str, Any], variant: str
) -> None:
    inp, _ = _interpreter_io(converted[variant])
    scale, zero_point = inp["quantization"]
    runner = TFLiteRunner(converted[variant], name=f"{variant}.tflite")
    image = converted["images"][5]
    runner.run(image)
    # What the interpreter actually received (read back from its input tensor).
    fed = runner._interpreter.get_tensor(inp["index"])
    assert fed.dtype == inp["dtype"]
    np.testing.assert_array_equal(fed, quantize(image[None], scale, zero_point, inp["dtype"]))
    info = np.iinfo(inp["dtype"])
    by_hand = np.clip(np.round(image[None] / scale) + zero_point, info.min, info.max)
    assert np.abs(fed.astype(np.int64) - by_hand).max() <= 1  # only exact .5 ties may differ
    # Not the hard-coded (x + 1) * 127.5 trick: that would be off by a zero point for int8.
    naive = np.clip(np.round((image[None] + 1) * 127.5), 0, 255)
    if variant == "int8":
        assert not np.array_equal(fed.astype(np.int64), naive.astype(np.int64))


@pytest.mark.slow
def test_uint8_and_int8_io_differ_only_by_128_in_the_zero_points(converted: dict[str, Any]) -> None:
    (i8_in, i8_out), (u8_in, u8_out) = (
        _interpreter_io(converted[v]) for v in ("int8", "int8-uint8")
    )
    assert u8_in["quantization"][1] == i8_in["quantization"][1] + 128
    assert u8_out["quantization"][1] == i8_out["quantization"][1] + 128
    images = converted["images"][:6]
    i8 = TFLiteRunner(converted["int8"], name="i8")
    u8 = TFLiteRunner(converted["int8-uint8"], name="u8")
    np.testing.assert_array_equal(
        np.stack([i8.run(x) for x in images]), np.stack([u8.run(x) for x in images])
    )


@pytest.mark.slow
def test_uint8_output_is_dequantized_before_any_delta(converted: dict[str, Any]) -> None:
    runner = TFLiteRunner(converted["int8-uint8"], name="u8")
    _, out = _interpreter_io(converted["int8-uint8"])
    scale, zero_point = out["quantization"]
    image = converted["images"][2]
    got = runner.run(image)
    raw = runner._interpreter.get_tensor(out["index"]).reshape(-1)
    assert raw.dtype == np.uint8
    np.testing.assert_allclose(got, (raw.astype(np.float64) - zero_point) * scale, rtol=1e-6)
    # A delta on the raw codes would be in the hundreds; on probabilities it is tiny.
    assert np.abs(got - converted["reference"][2]).max() < 0.05


def _zero_input_scale(tflite: bytes) -> bytes:
    """Patch the flatbuffer: the input tensor's float32 scale becomes 0.0."""
    inp, _ = _interpreter_io(tflite)
    pattern = np.float32(inp["quantization"][0]).tobytes()
    assert tflite.count(pattern) == 1  # the only tensor with that scale: patch exactly it
    return tflite.replace(pattern, np.float32(0.0).tobytes())


@pytest.mark.slow
def test_zero_scale_on_a_quantized_input_is_one_line(converted: dict[str, Any]) -> None:
    patched = _zero_input_scale(converted["int8"])
    inp, _ = _interpreter_io(patched)
    assert inp["quantization"][0] == 0.0  # LiteRT itself now reports the broken scale
    with pytest.raises(InvalidTFLiteModel) as info:
        TFLiteRunner(patched, name="int8.tflite")
    assert str(info.value) == (
        "int8.tflite: the input tensor's quantization scale is 0, not a positive number; the file "
        "is damaged, convert the model again"
    )


@pytest.mark.slow
def test_zero_scale_reaching_the_feed_is_still_one_line(converted: dict[str, Any]) -> None:
    """Defence in depth: quantize() itself refuses a zero scale, never dividing by it."""
    runner = TFLiteRunner(converted["int8"], name="int8.tflite")
    runner.input_quantization = (0.0, 0)
    with pytest.raises(InvalidTFLiteModel) as info:
        runner.run(converted["images"][0])
    assert str(info.value) == (
        "input tensor has a zero quantization scale; the model is broken, re-convert it"
    )


@pytest.mark.slow
def test_confident_model_int8_probabilities_are_not_softmaxed_again(
    tiny_data: Path, tmp_path: Path
) -> None:
    """End to end through the job code: an int8 variant of a confident softmax model.

    Its dequantized rows sum to 1 only within C * scale / 2, not 1e-3; a softmax on top would
    flatten them and report a false probability delta of about 0.5.
    """
    from core.engine.pipeline import run_job
    from core.inputs import rundir
    from core.types import JobSpec, Preset
    from tests.core.conftest import build_tiny_model

    model = build_tiny_model(seed=4)
    head = model.get_layer("scores")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 400.0, bias])  # near one-hot probabilities
    model.save(tmp_path / "confident.keras")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job = JobSpec(
        model_path=str(tmp_path / "confident.keras"),
        data_path=str(tiny_data),
        variants=("int8-uint8",),
        preset=Preset.MOBILENET_V2,
        latency_runs=2,
        warmup_runs=1,
    )
    run_job(job, run_dir, progress=lambda _event: None, cache_dir=None)
    report = rundir.read_json(run_dir / rundir.REPORT)
    # int8-uint8, then the float32 pivot the run adds for the conversion/quantization split.
    variant = next(v for v in report["variants"] if v["name"] == "int8-uint8")
    assert report["reference"]["softmax_applied"] is False
    reference = np.load(run_dir / rundir.REFERENCE_PROBS)
    assert reference.max(axis=1).mean() > 0.8  # the model really is confident
    assert variant["status"] == "done"
    assert variant["max_abs_prob_delta"] < 0.1, variant["max_abs_prob_delta"]
    assert variant["softmax_applied"] is False
