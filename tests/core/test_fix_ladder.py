"""The fix ladder end to end: on a model whose int8 collapses from one outlier activation
channel, `--auto-fix` tries equalization first, measures every rung on a seeded half of the
images, and derives an integer-only variant judged only on the other half; its agreement there
is recomputed here from its own `.tflite` with ai_edge_litert and the original with Keras."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from tests.core.test_cli import run_cli


def build_held_out_outlier_model(path: Path) -> Path:
    """A small conv net (not the demo's: other seed, widths and pooling) whose first conv's
    busiest output channel is multiplied by 300 and the next conv's matching input weights
    divided by 300: the same function, and a per-tensor int8 activation scale that rounds the
    other channels onto a sliver of the grid. Saved as `.keras` so the Keras layers can be
    equalized."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(11)
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(12, 3, padding="same", activation="relu", name="stem")(inputs)
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="body")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(6, name="logits")(x)
    model = keras.Model(inputs, outputs)
    probe = np.random.default_rng(1).uniform(0, 1, (32, 16, 16, 3)).astype(np.float32)
    stem = keras.Model(inputs, model.get_layer("stem").output)
    channel = int(np.argmax(np.abs(np.asarray(stem(probe))).mean(axis=(0, 1, 2))))
    w, b = model.get_layer("stem").get_weights()
    w[..., channel] *= 300.0
    b[channel] *= 300.0
    model.get_layer("stem").set_weights([w, b])
    w, b = model.get_layer("body").get_weights()
    w[:, :, channel, :] /= 300.0
    model.get_layer("body").set_weights([w, b])
    model.save(path)
    return path


def write_images(root: Path, count: int = 64) -> Path:
    """`count` unlabelled 16x16 PNGs of smooth colour fields with noise (seeded)."""
    from PIL import Image

    root.mkdir(parents=True)
    rng = np.random.default_rng(5)
    names = []
    for i in range(count):
        ramp = np.linspace(0, 1, 16)[None, :, None] * rng.uniform(-120, 120, (1, 1, 3))
        base = rng.uniform(40, 215, (1, 1, 3)) + ramp
        pixels = np.clip(base + rng.normal(0, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
        names.append(f"{i}.png")
    (root / "data.csv").write_text("filepath\n" + "".join(f"{n}\n" for n in names))
    return root / "data.csv"


def _rows(out: Path) -> list[str]:
    """The evaluated images' paths in samples.csv row order."""
    with (out / "samples.csv").open(encoding="utf-8") as f:
        return [row["relpath"] for row in csv.DictReader(f)]


def _keras_top1(model_path: Path, images: np.ndarray) -> np.ndarray:
    import keras

    model = keras.saving.load_model(model_path, compile=False)
    return np.asarray(model(images, training=False)).argmax(axis=1)


def _litert_top1(tflite: bytes, images: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=tflite, num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    top1 = []
    for image in images:
        x = image[None].astype(np.float64)
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            x = np.clip(np.round(x / scale) + zero, -128, 127)
        interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
        interpreter.invoke()
        top1.append(int(np.argmax(interpreter.get_tensor(out["index"])[0])))
    return np.array(top1)


@pytest.mark.slow
def test_auto_fix_derives_an_integer_only_fix_judged_on_images_the_search_did_not_see(
    tmp_path: Path,
) -> None:
    from PIL import Image

    from core.reporting.html import render_report_html

    model = build_held_out_outlier_model(tmp_path / "held_out_outlier.keras")
    data = write_images(tmp_path / "data")
    out = tmp_path / "out"
    done = run_cli(
        "run", str(model), "--data", str(data), "--modes", "int8", "--auto-fix=2", "--fix-budget", "8",
        "--preprocess", "unit", "--min-agreement", "97", "--latency-runs", "3",
        "--out", str(out), home=tmp_path,
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    by_name = {v["name"]: v for v in report["variants"]}
    parent = by_name["int8"]
    assert parent["top1_agreement_pct"] < 80, parent["top1_agreement_pct"]  # int8 collapses
    # Its diagnosis names the outlier channel between the two convs, in words, and the CLI says so.
    causes = parent["diagnosis"]["causes"]
    outlier = next(c for c in causes if c["cause"] == "outlier_channel")
    assert outlier["layer"] == "stem" and "equalize" in outlier["fixes"]
    # The words name the layer first, so the line names it once.
    assert f"cause: int8: {outlier['words']}\n" in done.stdout, done.stdout
    assert outlier["words"] in render_report_html(out)
    search = parent["auto_fix"]["search"]
    # The split: disjoint, covering every image, seeded.
    selected, held_out = set(search["selected_rows"]), set(search["held_out_rows"])
    assert not selected & held_out and len(selected | held_out) == 64 and search["seed"] == 0
    # Every rung tried is recorded, cheapest first; equalization was verified in float first.
    kinds = [c["kind"] for c in search["candidates"]]
    # Bias correction too: the channels the outlier squeezes round towards zero at `body`, an
    # error with a per-channel mean (a biased_error cause names it).
    assert kinds[:4] == ["equalize", "bias_correction", "int16_activations", "weight_only"]
    assert "keep_float" in kinds
    by_kind = {c["kind"]: c for c in search["candidates"]}
    assert by_kind["int16_activations"]["integer_only"] is True
    assert by_kind["int16_activations"]["fix"]["layers"] == ["stem", "pool", "body"]
    assert "reference kernels" in by_kind["int16_activations"]["note"]
    weight_only = by_kind["weight_only"]
    assert weight_only["variant"] == "int8_q:wo=stem" and weight_only["integer_only"] is False
    equalized = search["candidates"][0]
    assert equalized["status"] == "measured" and equalized["integer_only"] is True
    assert equalized["fix"]["layers"] and equalized["fix"]["float_top1_agreement_pct"] == 100.0
    assert equalized["fix"]["float_max_abs_delta"] < 1e-3
    assert equalized["n"] == len(selected)
    # The budget counts evaluations: 8, spent before the keep-float scan ran out of layers.
    assert search["budget"] == 8 and search["evaluations"] <= 8 and search["truncated"]
    assert "--fix-budget 8" in report["run"]["command"]
    assert search["chosen"] == equalized["variant"] == "int8:eq" and search["chosen_meets_bar"]
    assert "int8:eq" in search["pareto"]
    # The derived variant: integer-only, within 2 points of float32 TFLite, at most +1 % size.
    derived = by_name["int8:eq"]
    assert derived["parent"] == "int8" and derived["status"] == "done"
    assert derived["size_bytes"] <= 1.01 * parent["size_bytes"]
    assert derived["top1_agreement_pct"] >= by_name["float32"]["top1_agreement_pct"] - 2
    tflite = (out / f"{derived['file_id']}.tflite").read_bytes()
    # Integer-only as recorded from its own file, and by LiteRT's own tensor types.
    from tests.core.test_deployability import _float_tensors_inside

    assert derived["deployability"]["integer_only"]["integer_only"] is True
    assert not _float_tensors_inside(out / f"{derived['file_id']}.tflite")
    # Recomputed without QuantLens on the held-out images only: Keras vs ai_edge_litert.
    paths = _rows(out)
    chosen_rows = sorted(held_out)
    images = np.stack(
        [
            np.asarray(Image.open(data.parent / paths[r]).convert("RGB"), dtype=np.float32) / 255
            for r in chosen_rows
        ]
    )
    recomputed = 100 * np.mean(_keras_top1(model, images) == _litert_top1(tflite, images))
    judged = derived["judged_on_held_out"]
    assert judged["n"] == len(held_out)
    assert judged["top1_agreement_pct"] == pytest.approx(recomputed)
    assert derived["passed"] is (judged["top1_agreement_pct"] >= 97)
    assert "auto-fix: int8: " in done.stdout and "; chose int8:eq" in done.stdout
    assert f"int8:eq: verdict on the {judged['n']} images its fix search did not see" in done.stdout
    # The fix's own diagnosis is measured against the equalized float model it came from: the
    # outlier is gone there, so no cause names it any more.
    assert not any(c["cause"] == "outlier_channel" for c in derived["diagnosis"]["causes"])


def _variant(name: str, size: int, low: float, **extra: object) -> dict[str, object]:
    return {
        "name": name, "mode": "int8", "status": "done", "size_bytes": size, "n": 64,
        "top1_agreement_pct": 100.0, "top1_agreement_ci95": [low, 100.0], "passed": True,
        "latency_ms": {"p50": 0.1, "n": 3}, **extra,
    }  # fmt: skip


def test_the_recommendation_judges_a_derived_fix_on_its_held_out_images_only() -> None:
    """A fix that looks perfect on every image (its search's images included) is recommended
    only if its agreement on the images the search did not see meets the bar (the run's
    verdict, here the point estimate)."""
    from core.reporting.recommend import recommendation

    held_out = {
        "n": 8, "agreeing": 7, "top1_agreement_pct": 87.5,
        "top1_agreement_ci95": [52.9, 97.8], "passed": False,
    }  # fmt: skip
    report = {
        "options": {"min_agreement_pct": 90.0},
        "variants": [
            _variant("int8:eq", 100, 94.3, parent="int8", judged_on_held_out=held_out),
            _variant("float16", 200, 94.3),
        ],
    }
    assert recommendation(report)["variant"] == "float16"
    report["variants"][0]["judged_on_held_out"] = {
        **held_out, "agreeing": 8, "top1_agreement_pct": 100.0,
        "top1_agreement_ci95": [67.6, 100.0], "passed": True,
    }  # fmt: skip
    assert recommendation(report)["variant"] == "int8:eq"


@pytest.mark.slow
def test_an_equalization_that_changes_the_float_model_is_refused_with_the_difference(
    tmp_path: Path,
) -> None:
    """The equalize rung checks the equalized float model against the original before it is
    quantized: exact, it passes with its numbers; changed (here a weight edited after
    equalization), it is refused with the measured difference; a SavedModel has no Keras
    layers and is refused before anything runs."""
    from core.engine.equalize import EqualizationError
    from core.engine.fixes.equalize_rung import EqualizationRefused, equalized_reference, verify
    from core.engine.models import load_reference

    model = load_reference(build_held_out_outlier_model(tmp_path / "m.keras"))
    images = np.random.default_rng(2).uniform(0, 1, (40, 16, 16, 3)).astype(np.float32)
    equalized = equalized_reference(model, images[:20])
    assert {"stem", "body"} <= set(equalized.record.layers)
    checked = verify(model, equalized, images[20:])
    assert checked.images == 20 and checked.top1_agreement == 1.0
    assert checked.max_abs_delta < 1e-4
    body = equalized.keras_model.get_layer("body")
    kernel, bias = body.get_weights()
    body.set_weights([kernel * 1.5, bias])
    with pytest.raises(EqualizationRefused, match=r"max \|Δ output\| [0-9.e-]+ \(tolerance"):
        verify(model, equalized, images[20:])
    model.trackable.keras_model.export(str(tmp_path / "saved"), verbose=False)
    with pytest.raises(EqualizationError, match="SavedModel"):
        equalized_reference(load_reference(tmp_path / "saved"), images[:20])


def test_the_ladder_offers_each_rung_its_causes_name_cheapest_first() -> None:
    """From the causes: equalization first, 16-bit activations for each named chain (never
    for the pseudo-layers the diagnosis names the model's ends by), weight-only for the culprit
    op; bias correction only for the layers a biased_error cause names (none for the model's
    output pseudo-layer); a float16 variant gets no int8 rung."""
    from core.engine.fixes.ladder import ladder
    from core.reporting.sections.diagnosis import RootCause, VariantCauses
    from core.types import VariantSpec

    outlier = RootCause(
        layer="stem", layers=("stem", "pool", "body"), cause="outlier_channel", words="w",
        fixes=("equalize", "int16_activations", "weight_only", "keep_float"),
    )  # fmt: skip
    diffuse = RootCause(
        layer="head", layers=("head", "(model output)"), cause="diffuse", words="w",
        fixes=("int16_activations", "keep_float"),
    )  # fmt: skip
    biased = [
        RootCause(layer=name, layers=(name,), cause="biased_error", words="w",
                  fixes=("bias_correction",))
        for name in ("head", "(model output)", "body")
    ]  # fmt: skip
    rungs = ladder(VariantSpec.parse("int8"), VariantCauses(causes=(outlier, diffuse, *biased)))
    named = [(r.kind, None if r.spec is None else r.spec.name) for r in rungs]
    assert named == [
        ("equalize", "int8:eq"),
        ("bias_correction", "int8:bc=body+head"),
        ("int16_activations", "int8_q:int16=body+pool+stem"),
        ("int16_activations", "int8_q:int16=head"),
        ("weight_only", "int8_q:wo=stem"),
    ]
    assert rungs[1].integer_only and rungs[1].fix == {
        "kind": "bias_correction",
        "layers": ["body", "head"],
    }
    # No biased layer: no bias-correction rung at all.
    plain = ladder(VariantSpec.parse("int8"), VariantCauses(causes=(outlier, diffuse)))
    assert "bias_correction" not in [r.kind for r in plain]
    assert [r.spec for r in ladder(VariantSpec.parse("float16"), None)] == [None, None]


def test_a_diffuse_cause_tries_its_worst_suspect_at_16_bits_before_all_of_them() -> None:
    """A diffuse cause names the ranked suspects, not a chain: 16-bit activations for the worst
    one alone come first (one op on reference kernels), all five only after it; an outlier's
    chain is still tried whole (its tensor stays int8 unless the whole chain is covered)."""
    from core.engine.fixes.ladder import ladder
    from core.reporting.sections.diagnosis import RootCause, VariantCauses
    from core.types import VariantSpec

    diffuse = RootCause(
        layer="c4", layers=("c4", "c1", "c5", "c2", "c3"), cause="diffuse", words="w",
        fixes=("bias_correction", "int16_activations", "keep_float"),
    )  # fmt: skip
    outlier = RootCause(
        layer="stem", layers=("stem", "pool", "body"), cause="outlier_channel", words="w",
        fixes=("equalize", "int16_activations", "keep_float"),
    )  # fmt: skip
    rungs = ladder(VariantSpec.parse("int8"), VariantCauses(causes=(diffuse, outlier)))
    int16 = [r for r in rungs if r.kind == "int16_activations"]
    assert [r.fix["layers"] for r in int16] == [
        ["c4"],
        ["c4", "c1", "c5", "c2", "c3"],
        ["stem", "pool", "body"],
    ]
    assert [r.spec.name for r in int16 if r.spec is not None] == [
        "int8_q:int16=c4",
        "int8_q:int16=c1+c2+c3+c4+c5",
        "int8_q:int16=body+pool+stem",
    ]


@pytest.mark.slow
def test_fix_integer_only_tries_only_rungs_an_integer_only_target_can_run(tmp_path: Path) -> None:
    """`--fix integer-only`: weight-only and keep-float are recorded as skipped with the
    reason, not measured; a budget of 1 is spent on equalization and the truncation says so;
    `--fix-seed` sets the split of the images, recorded in the search."""
    model = build_held_out_outlier_model(tmp_path / "m.keras")
    data = write_images(tmp_path / "data", count=24)
    out = tmp_path / "out"
    run_cli(
        "run", str(model), "--data", str(data), "--modes", "int8", "--auto-fix",
        "--fix", "integer-only", "--fix-budget", "1", "--fix-seed", "7", "--preprocess", "unit",
        "--min-agreement", "97", "--latency-runs", "3", "--out", str(out), home=tmp_path,
    )  # fmt: skip
    report = json.loads((out / "report.json").read_text())
    search = next(v for v in report["variants"] if v["name"] == "int8")["auto_fix"]["search"]
    assert search["integer_only_required"] and search["truncated"]
    assert search["budget"] == 1 and search["evaluations"] == 1
    # --fix-seed chose the split: recorded, and another seed would have split otherwise.
    from core.engine.fixes.search import split_rows

    assert search["seed"] == 7 and "--fix-seed 7" in report["run"]["command"]
    assert tuple(search["selected_rows"]) == split_rows(24, 7).selected
    assert tuple(search["held_out_rows"]) == split_rows(24, 7).held_out
    assert split_rows(24, 7).selected != split_rows(24, 0).selected
    status = {c["kind"]: (c["status"], c.get("reason") or "") for c in search["candidates"]}
    assert status["equalize"][0] == "measured"
    assert status["int16_activations"] == ("skipped", "the evaluation budget ran out")
    assert status["weight_only"] == ("skipped", "--fix integer-only: weight_only computes in float")
    assert status["keep_float"][0] == "skipped" and "integer-only" in status["keep_float"][1]
    chosen = next(c for c in search["candidates"] if c["variant"] == search["chosen"])
    assert chosen["integer_only"] is True
    assert "--fix integer-only" in report["run"]["command"]
