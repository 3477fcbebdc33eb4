"""Bias correction, the fix ladder's second rung, on a model whose int8 error is biased for a
stated reason: the cause is named with numbers this test recomputes from the float and int8
models' own tensors, and the rung removes the shift and gives the agreement back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.core.test_cli import run_cli
from tests.core.test_fix_ladder import _keras_top1, _litert_top1, _rows, write_images

STEP = 0.01  # the conv's per-channel weight step, in float units (max |w| = 127 steps)


def build_biased_model(path: Path, *, biased: bool = True) -> Path:
    """conv (8 channels, linear) -> global average -> logits = the conv's channel means.

    LiteRT quantizes a conv kernel per output channel, symmetric: step = max |w| / 127, each
    weight rounded to the nearest step. One weight per channel is 127 steps (it sets the step
    to exactly STEP, and adds the same to every channel); every other weight of channel c sits
    at an integer number of steps plus f_c, f_c from 0.05 to 0.45: below the half step, so
    int8 rounds every one of them down by f_c steps. On inputs in [0, 1] each output of
    channel c is then lower by f_c x STEP x (the sum of its inputs), a different amount per
    channel: the logits' order changes on the images whose top two are close. `biased=False`
    puts the weights on the grid (nothing to correct). The conv has no bias: the rung adds
    one."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(3)
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="shifted")(inputs)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(8, name="logits")(x)
    model = keras.Model(inputs, outputs)
    steps = np.random.default_rng(0).integers(-4, 5, (3, 3, 3, 8)).astype(np.float64)
    if biased:
        steps += np.linspace(0.05, 0.45, 8)
    steps[1, 1, 0, :] = 127.0
    zeros = np.zeros(8, np.float32)
    model.get_layer("shifted").set_weights([(steps * STEP).astype(np.float32)])
    model.get_layer("logits").set_weights([np.eye(8, dtype=np.float32), zeros])
    model.save(path)
    return path


def kernel_steps(biased: bool = True) -> np.ndarray:
    """The conv's kernel in steps of STEP, as build_biased_model sets it."""
    steps = np.random.default_rng(0).integers(-4, 5, (3, 3, 3, 8)).astype(np.float64)
    if biased:
        steps += np.linspace(0.05, 0.45, 8)
    steps[1, 1, 0, :] = 127.0
    return steps


def images(count: int, seed: int) -> np.ndarray:
    """Smooth colour fields with noise, as decoded pixels / 255 (the `unit` preset)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, 16)[None, None, :, None] * rng.uniform(-120, 120, (count, 1, 1, 3))
    base = rng.uniform(40, 215, (count, 1, 1, 3)) + ramp
    pixels = np.clip(base + rng.normal(0, 30, (count, 16, 16, 3)), 0, 255).astype(np.uint8)
    return (pixels / 255.0).astype(np.float32)


def conv_outputs(tflite: bytes, batch: np.ndarray) -> tuple[np.ndarray, float | None]:
    """The CONV_2D op's output on each image [N,16,16,8], dequantized, read with a bare LiteRT
    interpreter (every tensor kept, no delegate), and its int8 step (None in float)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=tflite,
        experimental_preserve_all_tensors=True,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    conv = next(op for op in interpreter._get_ops_details() if op["op_name"] == "CONV_2D")
    out = next(d for d in interpreter.get_tensor_details() if d["index"] == conv["outputs"][0])
    inp = interpreter.get_input_details()[0]
    values = []
    for image in batch:
        x = image[None].astype(np.float64)
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            x = np.clip(np.round(x / scale) + zero, -128, 127)
        interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
        interpreter.invoke()
        raw = interpreter.get_tensor(out["index"])[0].astype(np.float64)
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            raw = (raw - zero) * scale
        values.append(raw)
    step = None if out["dtype"] == np.float32 else float(out["quantization"][0])
    return np.stack(values), step


def channel_error(float_tflite: bytes, tflite: bytes, batch: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per channel of the conv: mean and standard deviation of (int8 - float), and the step."""
    floats, _ = conv_outputs(float_tflite, batch)
    quantized, step = conv_outputs(tflite, batch)
    assert step is not None
    error = (quantized - floats).reshape(-1, 8)
    return error.mean(axis=0), error.std(axis=0), np.float64(step)


def predicted_shift(batch: np.ndarray) -> np.ndarray:
    """The mean per-channel error the kernel's rounding alone makes: the conv ("same" padding)
    of the images with (round(w / step) - w / step) x step, averaged over positions and images.
    Per-channel symmetric int8: step = max |w| / 127 = STEP, every weight to its nearest step."""
    steps = kernel_steps()
    delta = (np.round(steps) - steps) * STEP
    padded = np.pad(batch.astype(np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((*batch.shape[:3], 8))
    for i in range(3):
        for j in range(3):
            out += padded[:, i : i + 16, j : j + 16, :] @ delta[i, j]
    return np.asarray(out.reshape(-1, 8).mean(axis=0))


@pytest.mark.slow
def test_the_biased_conv_is_named_with_the_shift_its_weight_grid_predicts(tmp_path: Path) -> None:
    """The cause's numbers are those this test measures with a bare interpreter on the float
    and int8 models' conv outputs, and the shift is the one the weights' rounding predicts; the
    same model with its weights on the grid has no biased layer."""
    from core.engine.backends import tflite_from_reference
    from core.engine.biased_error import biased_error_cause, layer_errors
    from core.engine.models import load_reference
    from core.types import VariantSpec

    batch = images(40, seed=1)
    found = {}
    for biased in (True, False):
        model = load_reference(build_biased_model(tmp_path / f"{biased}.keras", biased=biased))
        f32 = tflite_from_reference(model, VariantSpec.parse("float32"), model_sha256="m").tflite
        int8 = tflite_from_reference(
            model, VariantSpec.parse("int8"), model_sha256="m", calibration=batch
        ).tflite
        errors = layer_errors(f32, int8, batch)
        found[biased] = (f32, int8, {e.layer: biased_error_cause(e) for e in errors})
    f32, int8, causes = found[True]
    cause = causes["shifted"]
    assert (
        cause is not None and cause.cause == "biased_error" and cause.fixes[0] == "bias_correction"
    )
    mean, std, step = channel_error(f32, int8, batch)
    shifted = (np.abs(mean) >= 0.5 * step) & (np.abs(mean) >= 0.5 * std)
    assert cause.evidence["shifted_channels"] == [int(c) for c in np.flatnonzero(shifted)]
    steps = np.abs(mean[shifted]) / step
    assert cause.evidence["mean_shift_steps"] == pytest.approx(steps.mean(), rel=1e-4)
    assert cause.evidence["scale"] == pytest.approx(step)
    assert np.allclose(cause.evidence["channel_mean_error"], mean, atol=1e-6)
    assert cause.words.startswith(
        f"shifted: {shifted.sum()} of 8 channels are shifted down by {steps.mean():.2g} of a "
        "quantization step on average"
    )
    # The stated reason: every weight rounds down by f_c steps, every output follows.
    assert shifted.sum() >= 6 and np.all(mean < 0)
    assert np.allclose(mean, predicted_shift(batch), atol=0.5 * step)
    # Weights on the grid: rounding leaves no shift, no layer is named.
    assert not any(found[False][2].values()), found[False][2]


@pytest.mark.slow
def test_bias_correction_removes_the_shift_and_gives_the_agreement_back(tmp_path: Path) -> None:
    """`int8:bc=shifted`: the conv (which had no bias) gets one that absorbs its mean int8
    error; measured again with a bare interpreter the shift is gone, and on other images the
    corrected int8 model agrees with the original far more often. A conv whose batch norm the
    converter folds has the batch norm's beta corrected; a layer without a bias to edit or a
    model Keras cannot clone is refused with its reason."""
    from core.engine.backends import bias_correction, tflite_from_reference
    from core.engine.fixes.bias_correct import BiasCorrectionError, _clone_with_biases
    from core.engine.models import load_reference
    from core.errors import ConversionFailed
    from core.types import VariantSpec

    path = build_biased_model(tmp_path / "m.keras")
    model = load_reference(path)
    calibration, held_out = images(40, seed=1), images(160, seed=2)
    f32 = tflite_from_reference(model, VariantSpec.parse("float32"), model_sha256="m").tflite
    int8 = tflite_from_reference(
        model, VariantSpec.parse("int8"), model_sha256="m", calibration=calibration
    ).tflite
    spec = VariantSpec.parse("int8:bc=shifted")
    corrected = tflite_from_reference(model, spec, model_sha256="m", calibration=calibration)
    record = bias_correction(model, spec, model_sha256="m", calibration=calibration)
    (shift,) = record.shifts
    assert shift.layer == "shifted" and shift.added_bias and shift.corrected_channels == 8
    before, _, step = channel_error(f32, int8, calibration)
    after, _, step_after = channel_error(f32, corrected.tflite, calibration)
    assert shift.mean_abs_steps == pytest.approx(np.abs(before / step).mean(), rel=0.05)
    assert np.all(np.abs(after) < 0.5 * step_after), after / step_after
    assert np.abs(after).mean() < np.abs(before).mean() / 5
    original = _keras_top1(path, held_out)
    plain = float(np.mean(_litert_top1(int8, held_out) == original))
    fixed = float(np.mean(_litert_top1(corrected.tflite, held_out) == original))
    assert fixed >= plain + 0.15, (plain, fixed)
    assert len(corrected.tflite) - len(int8) <= 400, len(corrected.tflite) - len(int8)  # a bias
    # Bad input: refused with the reason, never a crash.
    with pytest.raises(ConversionFailed, match="a GlobalAveragePooling2D layer"):
        tflite_from_reference(
            model, VariantSpec.parse("int8:bc=gap"), model_sha256="m", calibration=calibration
        )
    # A conv whose batch norm the converter folds into its op: the batch norm's beta is the
    # bias that moves that op's output, and the conv gets no bias of its own.
    folded = load_reference(build_batch_norm_model(tmp_path / "bn.keras"))
    spec = VariantSpec.parse("int8:bc=conv")
    fixed_bn = bias_correction(folded, spec, model_sha256="bn", calibration=calibration)
    (bn_shift,) = fixed_bn.shifts
    assert bn_shift.corrected == "norm" and not bn_shift.added_bias
    conv = fixed_bn.keras_model.get_layer("conv")
    assert not conv.use_bias and len(conv.get_weights()) == 1
    beta = fixed_bn.keras_model.get_layer("norm").get_weights()[1]
    assert not np.allclose(beta, 0.5)  # moved from the 0.5 it was built with
    with pytest.raises(BiasCorrectionError, match="subclassed"):
        _clone_with_biases(subclassed_model(), set())


def build_batch_norm_model(path: Path) -> Path:
    """conv (no bias) -> batch norm -> global average -> softmax: the converter folds the batch
    norm into the conv, whose output then carries the batch norm's name."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(4)
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = layers.BatchNormalization(name="norm")(x)
    x = layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, layers.Dense(3, activation="softmax", name="probabilities")(x))
    four = np.ones(4, np.float32)
    model.get_layer("norm").set_weights([2 * four, 0.5 * four, 0.1 * four, 4 * four])
    model.save(path)
    return path


def subclassed_model() -> object:
    import keras

    class Net(keras.Model):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.conv = keras.layers.Conv2D(2, 3)

        def call(self, x: object) -> object:
            return self.conv(x)

    net = Net()
    net(np.zeros((1, 8, 8, 3), np.float32))
    return net


@pytest.mark.slow
def test_auto_fix_integer_only_picks_bias_correction_judged_on_held_out_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The run names the biased conv in report.json, the CLI and report.html; `--auto-fix --fix
    integer-only` measures the bias-correction rung (typed, with its per-layer shift and the
    float model's change), picks it, and its agreement on the images the search did not see is
    recomputed here from its own `.tflite`; the fix page lists it as tried; re-scoring the same
    rung is refused as already in the run."""
    from PIL import Image

    from core.cli import main
    from core.jobs.rescore import rescore_command
    from core.reporting.fix_ladder import ladders
    from core.reporting.html import render_report_html
    from core.reporting.runmodel import Variant
    from core.types import VariantSpec

    model = build_biased_model(tmp_path / "biased.keras")
    data = write_images(tmp_path / "data", count=64)
    out = tmp_path / "out"
    done = run_cli(
        "run", str(model), "--data", str(data), "--modes", "int8", "--auto-fix=1",
        "--fix", "integer-only", "--fix-budget", "4", "--preprocess", "unit",
        "--min-agreement", "97", "--latency-runs", "3", "--out", str(out), home=tmp_path,
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    by_name = {v["name"]: v for v in report["variants"]}
    parent = by_name["int8"]
    cause = next(c for c in parent["diagnosis"]["causes"] if c["cause"] == "biased_error")
    assert cause["layer"] == "shifted" and cause["fixes"] == ["bias_correction"]
    assert cause["words"].startswith("shifted: 8 of 8 channels are shifted down by ")
    # The words name the layer first, so the line names it once.
    assert f"cause: int8: {cause['words']}\n" in done.stdout, done.stdout
    assert cause["words"] in render_report_html(out)
    thresholds = parent["diagnosis"]["causes_measured_on"]["thresholds"]
    assert thresholds["bias_min_steps"] == 0.5 and thresholds["bias_spread_ratio"] == 0.5
    search = parent["auto_fix"]["search"]
    rung = next(c for c in search["candidates"] if c["kind"] == "bias_correction")
    assert rung["variant"] == "int8:bc=shifted" and rung["status"] == "measured"
    assert rung["integer_only"] is True and rung["n"] == len(search["selected_rows"])
    assert rung["agreement_pct"] >= search["parent_agreement_pct"] + 10
    fix = rung["fix"]
    assert fix["kind"] == "bias_correction" and fix["layers"] == ["shifted"]
    assert fix["shift"]["shifted"]["added_bias"] is True
    assert fix["shift"]["shifted"]["mean_abs_steps"] > 1
    assert fix["float_images"] == len(search["selected_rows"])
    assert fix["float_max_abs_delta"] > 1e-3 and fix["float_top1_agreement_pct"] <= 100
    assert search["chosen"] == "int8:bc=shifted"
    derived = by_name["int8:bc=shifted"]
    assert derived["parent"] == "int8" and derived["bias_corrected_layers"] == ["shifted"]
    assert derived["size_bytes"] - parent["size_bytes"] <= 400  # the bias it added (8 int32)
    # Recomputed without QuantLens on the held-out images: Keras vs a bare ai_edge_litert.
    held_out = search["held_out_rows"]
    paths = _rows(out)
    pixels = [np.asarray(Image.open(data.parent / paths[r]).convert("RGB")) for r in held_out]
    batch = np.stack(pixels).astype(np.float32) / 255
    tflite = (out / f"{derived['file_id']}.tflite").read_bytes()
    recomputed = 100 * np.mean(_keras_top1(model, batch) == _litert_top1(tflite, batch))
    judged = derived["judged_on_held_out"]
    assert judged["n"] == len(held_out)
    assert judged["top1_agreement_pct"] == pytest.approx(recomputed)
    # Corrected, the conv's error is no longer biased.
    assert not any(c["cause"] == "biased_error" for c in derived["diagnosis"]["causes"])
    # The fix page: the cause's ladder lists the rung as tried, integer-only.
    variants = [Variant.from_dict(v) for v in report["variants"]]
    (ladder,) = [
        lad for lad in ladders(Variant.from_dict(parent), variants)
        if lad.cause.cause == "biased_error" and lad.cause.layer == "shifted"
    ]  # fmt: skip
    (tried,) = [r for r in ladder.rungs if r.kind == "bias_correction"]
    assert tried.variant == "int8:bc=shifted" and tried.agreement_delta_pts is not None
    assert tried.agreement_delta_pts > 0
    # The re-score of the same rung: its command, and refused as already in the run.
    command = rescore_command(out, VariantSpec.parse("int8:bc=shifted"))
    assert command.endswith("--variant int8 --bias-correct shifted")
    monkeypatch.setenv("QUANTLENS_HOME", str(tmp_path))
    code = main(["rescore", str(out), "--variant", "int8", "--bias-correct", "shifted"])
    assert code != 0 and "int8:bc=shifted is already in this run" in capsys.readouterr().err


def test_a_bias_corrected_variant_is_named_parsed_and_refused_in_one_line() -> None:
    """`int8:bc=A+B` round-trips, only on a plain int8 parent; the fix page and the re-score
    name the rung the same way."""
    from core.errors import QuantLensError
    from core.fix_variants import fix_variant_name as fix_variant
    from core.jobs.rescore import RESCORE_FIXES, _derived_spec
    from core.types import VariantSpec

    spec = VariantSpec.parse("int8_q:bc=dense+conv")
    assert spec.bias_corrected_layers == ("conv", "dense") and spec.name == "int8_q:bc=conv+dense"
    assert spec.without_overrides().name == "int8_q" and spec.has_overrides
    assert spec.to_dict()["bias_corrected_layers"] == ["conv", "dense"]
    with pytest.raises(QuantLensError, match="use it with int8 or int8_q"):
        VariantSpec.parse("float16:bc=conv")
    with pytest.raises(QuantLensError, match="without other overrides"):
        VariantSpec.parse("int8:eq:bc=conv")
    assert fix_variant("int8", "bias_correction", ("dense", "conv")) == "int8:bc=conv+dense"
    assert fix_variant("float16", "bias_correction", ("conv",)) is None
    assert fix_variant("int8", "bias_correction", ("(model output)",)) is None
    assert "bias_correction" in RESCORE_FIXES
    assert _derived_spec("int8", ("conv",), "bias_correction").name == "int8:bc=conv"
    with pytest.raises(QuantLensError, match="int8:keep=conv is itself derived"):
        _derived_spec("int8:keep=conv", ("conv",), "bias_correction")
