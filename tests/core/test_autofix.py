"""`--auto-fix K` (issue 12): the greedy search stops at the threshold or at K, each step is
recorded, and the derived variant it leaves is real: its agreement is recomputed here from its
own `.tflite` with ai_edge_litert and the original with TensorFlow."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from core.engine.fixes.keep_float import Measurement, greedy_fix, sensitivity_scan
from core.errors import ConversionFailed
from core.reporting.report import chosen_step
from tests.core.test_cli import run_cli
from tests.core.test_cli_quantizer import _inputs, _reference_probs, _tflite_probs
from tests.core.test_selective import _write_images

# -- the search itself, on scripted measurements ------------------------------------------------


def _scripted(agreement: dict[tuple[str, ...], float]) -> tuple[object, object]:
    """make: layers -> bytes naming them; evaluate: bytes -> the scripted agreement (KL falls
    as agreement rises)."""

    def make(layers: tuple[str, ...]) -> bytes:
        if "broken" in layers:
            raise ConversionFailed("broken: cannot be kept in float")
        return "+".join(sorted(layers)).encode()

    def evaluate(data: bytes) -> Measurement:
        layers = tuple(sorted(data.decode().split("+")))
        pct = agreement.get(layers, 50.0)
        return Measurement(
            agreement_pct=pct, mean_kl=(100 - pct) / 100, size_bytes=len(data), n=100
        )

    return make, evaluate


PARENT = Measurement(agreement_pct=50.0, mean_kl=0.5, size_bytes=10, n=100)


def test_greedy_fix_stops_at_the_first_step_that_meets_the_bar() -> None:
    make, evaluate = _scripted({("a",): 80.0, ("a", "b"): 96.0, ("a", "b", "c"): 99.0})
    steps = greedy_fix(
        make,  # type: ignore[arg-type]
        evaluate,  # type: ignore[arg-type]
        ["a", "b", "c", "d"],
        parent=PARENT,
        max_layers=4,
        meets=lambda m: m.agreement_pct >= 95.0,
        progress=lambda f, m: None,
    )
    assert [s["layers"] for s in steps] == [["a"], ["a", "b"]]
    assert [s["meets_threshold"] for s in steps] == [False, True]
    assert [s["kept"] for s in steps] == [True, True]
    assert steps[-1]["agreement_pct"] == 96.0 and steps[-1]["mean_kl"] == pytest.approx(0.04)


def test_greedy_fix_stops_at_k_when_the_bar_is_never_met() -> None:
    make, evaluate = _scripted({("a",): 80.0, ("a", "b"): 90.0})
    steps = greedy_fix(
        make,  # type: ignore[arg-type]
        evaluate,  # type: ignore[arg-type]
        ["a", "b", "c"],
        parent=PARENT,
        max_layers=2,
        meets=lambda m: m.agreement_pct >= 95.0,
        progress=lambda f, m: None,
    )
    assert [s["layers"] for s in steps] == [["a"], ["a", "b"]]
    assert not any(s["meets_threshold"] for s in steps)
    assert chosen_step(steps) == steps[-1]


def test_greedy_fix_drops_a_layer_that_makes_the_best_so_far_worse() -> None:
    """On top of a, b hurts: it is tried, not kept, and c is tried instead; a layer worse than
    the parent is never kept."""
    make, evaluate = _scripted(
        {("z",): 40.0, ("a",): 80.0, ("a", "b"): 70.0, ("a", "c"): 90.0, ("a", "c", "d"): 90.0}
    )
    steps = greedy_fix(
        make,  # type: ignore[arg-type]
        evaluate,  # type: ignore[arg-type]
        ["z", "a", "b", "c", "d"],
        parent=PARENT,
        max_layers=2,
        meets=lambda m: m.agreement_pct >= 95.0,
        progress=lambda f, m: None,
    )
    assert [(s["layers"], s["kept"]) for s in steps] == [
        (["z"], False),
        (["a"], True),
        (["a", "b"], False),
        (["a", "c"], True),
    ]
    chosen = chosen_step(steps)
    assert chosen is not None and chosen["layers"] == ["a", "c"] and chosen["agreement_pct"] == 90


def test_greedy_fix_keeps_a_layer_that_changes_nothing_for_the_one_that_needs_it() -> None:
    """Either of a and b alone changes nothing; both together fix the model (an outlier
    channel and the op that reads it)."""
    make, evaluate = _scripted({("a",): 50.0, ("b",): 50.0, ("a", "b"): 100.0})
    steps = greedy_fix(
        make,  # type: ignore[arg-type]
        evaluate,  # type: ignore[arg-type]
        ["a", "b"],
        parent=PARENT,
        max_layers=3,
        meets=lambda m: m.agreement_pct >= 95.0,
        progress=lambda f, m: None,
    )
    assert [(s["layers"], s["kept"], s["meets_threshold"]) for s in steps] == [
        (["a"], True, False),
        (["a", "b"], True, True),
    ]


def test_the_chosen_step_is_the_first_to_reach_the_paths_best_agreement() -> None:
    """Layers kept later for a lower KL alone do not earn their bytes."""
    make, evaluate = _scripted({("a",): 90.0, ("a", "b"): 95.0})
    steps = greedy_fix(
        make,  # type: ignore[arg-type]
        evaluate,  # type: ignore[arg-type]
        ["a", "b", "c", "d"],
        parent=PARENT,
        max_layers=4,
        meets=lambda m: m.agreement_pct >= 99.0,
        progress=lambda f, m: None,
    )
    # c and d change nothing (50 %, scripted), so they are worse than a+b and dropped; now say
    # a later step held 95 % with a lower KL: it is kept but not chosen.
    later = {**steps[1], "layers": ["a", "b", "e"], "mean_kl": 0.01}
    chosen = chosen_step([*steps, later])
    assert chosen is not None and chosen["layers"] == ["a", "b"]
    assert chosen_step([{"layers": ["x"], "agreement_pct": 1.0}]) == {  # an older report
        "layers": ["x"],
        "agreement_pct": 1.0,
    }


def test_greedy_fix_keeps_nothing_when_every_layer_makes_it_worse() -> None:
    make, evaluate = _scripted({("a",): 49.0, ("b",): 50.0})
    steps = greedy_fix(
        make,  # type: ignore[arg-type]
        evaluate,  # type: ignore[arg-type]
        ["a", "b"],
        parent=Measurement(agreement_pct=50.0, mean_kl=0.0, size_bytes=10, n=100),
        max_layers=3,
        meets=lambda m: m.agreement_pct >= 95.0,
        progress=lambda f, m: None,
    )
    assert [s["kept"] for s in steps] == [False, False]  # b ties on agreement, loses on KL
    assert chosen_step(steps) is None


def test_sensitivity_ranks_by_measured_error_and_keeps_the_statistics_rank() -> None:
    make, evaluate = _scripted({("a",): 51.0, ("b",): 70.0, ("c",): 60.0})
    ranked = sensitivity_scan(
        make,  # type: ignore[arg-type]
        evaluate,  # type: ignore[arg-type]
        ["a", "broken", "b", "c"],
        progress=lambda f, m: None,
    )
    # b helps most although the statistics ranked it third; a layer that cannot be made is left out.
    assert [(m["layer"], m["stat_rank"]) for m in ranked] == [("b", 3), ("c", 4), ("a", 1)]


def test_the_search_budget_counts_evaluations_and_the_split_is_seeded() -> None:
    """The fix search's budget is a number of candidate evaluations (a slow machine measures
    the same candidates), and its split of the images is disjoint, complete and seeded."""
    from core.engine.fixes.search import Budget, split_rows

    budget = Budget(2)
    assert [budget.take() for _ in range(3)] == [True, True, False]
    assert budget.truncated and budget.used == 2
    split = split_rows(64, 0)
    assert split == split_rows(64, 0) and split != split_rows(64, 1)
    assert len(split.selected) == 32 and not set(split.selected) & set(split.held_out)
    assert sorted(split.selected + split.held_out) == list(range(64))


def test_the_cheapest_rung_that_meets_the_bar_is_chosen_and_pareto_keeps_the_rest() -> None:
    from core.engine.fixes.search import choose, pareto
    from core.reporting.sections.fixes import FixCandidate

    def c(kind: str, name: str, pct: float, size: int, ms: float, io: bool) -> FixCandidate:
        return FixCandidate(
            kind=kind, variant=name, parent="int8", fix={"kind": kind}, status="measured",
            agreement_pct=pct, n=32, size_bytes=size, p50_ms=ms, integer_only=io,
            meets_bar=pct >= 95,
        )  # fmt: skip

    eq = c("equalize", "int8:eq", 96.0, 100, 1.0, True)
    i16 = c("int16_activations", "int8_q:int16=a", 99.0, 103, 9.0, True)
    kf = c("keep_float", "int8:keep=a", 100.0, 140, 1.5, False)
    worse = c("keep_float", "int8:keep=b", 90.0, 150, 2.0, False)
    assert choose([eq, i16, kf, worse], integer_only=False) == (eq, True)
    assert choose([kf], integer_only=True) == (None, False)
    # Nothing meets the bar: the best so far, only when it beats the parent on those images.
    assert choose([worse], integer_only=False, parent_pct=80.0) == (worse, False)
    assert choose([worse], integer_only=False, parent_pct=90.0) == (None, False)
    # A rung that meets the bar but only ties its parent there is passed over for one that
    # beats it, and chosen by no one when none does.
    assert choose([eq, i16], integer_only=False, parent_pct=96.0) == (i16, True)
    assert choose([eq], integer_only=False, parent_pct=96.0) == (None, False)
    assert set(pareto([eq, i16, kf, worse])) == {"int8:eq", "int8_q:int16=a", "int8:keep=a"}


# -- end to end on a model int8 really breaks ---------------------------------------------------


def build_outlier_model(path: Path) -> Path:
    """A conv whose one outlier channel (5000x the others) sets its output's int8 scale, followed
    by a 1x1 conv that ignores that channel: int8 loses the information the logits need, and
    keeping those two layers in float gives it back. A real, known failure mode of per-tensor
    activation quantization, built on purpose so the test knows where the damage is."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", name="wide")(inputs)
    x = layers.ReLU(name="wide_relu")(x)
    x = layers.Conv2D(8, 1, name="mix")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(4, name="head")(x)
    model = keras.Model(inputs, outputs)
    weights, bias = model.get_layer("wide").get_weights()
    weights[..., 0] *= 5000.0
    model.get_layer("wide").set_weights([weights, bias])
    weights, bias = model.get_layer("mix").get_weights()
    weights[:, :, 0, :] = 0.0
    model.get_layer("mix").set_weights([weights, bias])
    model.export(str(path), verbose=False)
    return path


@pytest.mark.slow
def test_auto_fix_stops_at_the_threshold_with_a_variant_that_reproduces(tmp_path: Path) -> None:
    model = build_outlier_model(tmp_path / "outlier")
    data = _write_images(tmp_path / "data")
    out = tmp_path / "out"
    done = run_cli(
        "run",
        str(model),
        "--data",
        str(data),
        "--modes",
        "int8",
        "--auto-fix=4",
        "--preprocess",
        "unit",
        "--min-agreement",
        "99",
        "--latency-runs",
        "3",
        "--out",
        str(out),
        home=tmp_path,
    )
    report = json.loads((out / "report.json").read_text())
    by_name = {v["name"]: v for v in report["variants"]}
    parent = by_name["int8"]
    assert parent["top1_agreement_pct"] < 99
    fix = parent["auto_fix"]
    steps = fix["steps"]
    # It stopped at the first step that met the bar, within K, and recorded every step.
    assert 1 <= len(steps) <= 4
    assert steps[-1]["meets_threshold"] and steps[-1]["agreement_pct"] >= 99
    assert not any(s["meets_threshold"] or s["agreement_pct"] >= 99 for s in steps[:-1])
    kept = [s for s in steps if s["kept"]]
    assert [len(s["layers"]) for s in kept] == list(range(1, len(kept) + 1))
    assert all(b["agreement_pct"] >= a["agreement_pct"] for a, b in itertools.pairwise(kept))
    # Measured on the search's half of the 24 images only.
    assert len(fix["search"]["selected_rows"]) == 12
    assert all(s["n"] == 12 and s["size_bytes"] > 0 and s["mean_kl"] >= 0 for s in steps)
    # Both rankings are there: the measured order and each layer's rank by the statistics.
    assert {m["layer"] for m in fix["sensitivity"]} >= {"wide", "mix"}
    assert all(m["stat_rank"] >= 1 for m in fix["sensitivity"])
    # A SavedModel has no Keras layers to equalize: that rung is skipped with its reason.
    search = fix["search"]
    equalize = search["candidates"][0]
    assert equalize["kind"] == "equalize" and equalize["status"] == "skipped"
    assert "SavedModel" in equalize["reason"]
    # The derived variant is the cheapest rung that met the bar on the search's images, real.
    derived = by_name[fix["variant"]]
    chosen = next(c for c in search["candidates"] if c["variant"] == fix["variant"])
    before = search["candidates"][: search["candidates"].index(chosen)]
    assert chosen["meets_bar"] and not any(c.get("meets_bar") for c in before)
    assert derived["parent"] == "int8" and derived["size_bytes"] == chosen["size_bytes"]
    assert derived["status"] == "done" and derived["latency_ms"]["n"] == 3
    assert derived["passed"] is derived["judged_on_held_out"]["passed"]
    assert done.returncode == 1  # the parent still fails
    images = _inputs(data)
    ref = _reference_probs(model, images).argmax(axis=1)
    for name in ("int8", derived["name"]):
        tfl = _tflite_probs(out / f"{by_name[name]['file_id']}.tflite", images).argmax(axis=1)
        assert by_name[name]["top1_agreement_pct"] == pytest.approx(100 * np.mean(ref == tfl))
    assert derived["top1_agreement_pct"] > parent["top1_agreement_pct"]
    assert "--auto-fix=4" in report["run"]["command"]


@pytest.mark.slow
def test_auto_fix_on_a_variant_that_meets_the_bar_says_there_is_nothing_to_fix(
    tmp_path: Path,
) -> None:
    from tests.core.conftest import write_tiny_images
    from tests.core.test_preset_check import build_raw_input_model

    model = tmp_path / "raw_input.keras"
    build_raw_input_model().save(model)  # int8 agrees on every image
    data = write_tiny_images(tmp_path / "data")
    out = tmp_path / "out"
    done = run_cli(
        "run",
        str(model),
        "--data",
        str(data),
        "--modes",
        "int8,float16",
        "--auto-fix=4",
        "--preprocess",
        "raw",
        "--min-agreement",
        "90",
        "--latency-runs",
        "3",
        "--out",
        str(out),
        home=tmp_path,
    )
    report = json.loads((out / "report.json").read_text())
    by_name = {v["name"]: v for v in report["variants"]}
    assert by_name["int8"]["top1_agreement_pct"] >= 90  # the bar is met: nothing to search
    assert by_name["int8"]["auto_fix"] == {"nothing_to_fix": "int8 meets 90 %, nothing to fix"}
    assert "auto-fix: int8 meets 90 %, nothing to fix" in done.stdout, done.stdout
    assert "auto_fix" not in by_name["float16"]  # float16 keeps no layers in float
    assert sorted(by_name) == ["float16", "float32", "int8"]  # no derived variant


@pytest.mark.slow
def test_a_variant_auto_fix_added_survives_a_worker_restart(tmp_path: Path) -> None:
    """int8's fix is added and evaluated, then int8-float32's fix crashes its worker (an
    injected segfault); the restarted worker still counts int8's fix as part of the job and
    times it."""
    model = build_outlier_model(tmp_path / "outlier")
    data = _write_images(tmp_path / "data")
    out = tmp_path / "out"
    # The rung the ladder reaches on this model and data (measured once, deterministic): 16-bit
    # activations for the outlier chain, on the quantizer, with the parent's float I/O.
    crashing = "int8-float32_q:int16=mix+wide"
    run_cli(
        "run",
        str(model),
        "--data",
        str(data),
        "--modes",
        "int8,int8-float32",
        "--auto-fix=4",
        "--preprocess",
        "unit",
        "--min-agreement",
        "99",
        "--latency-runs",
        "3",
        "--out",
        str(out),
        home=tmp_path,
        env={"QUANTLENS_FAULT": f"segv@infer:{crashing}"},
    )
    report = json.loads((out / "report.json").read_text())
    by_name = {v["name"]: v for v in report["variants"]}
    assert by_name[crashing]["status"] == "crashed"
    survivor = by_name[by_name["int8"]["auto_fix"]["variant"]]
    assert survivor["parent"] == "int8" and survivor["status"] == "done"
    assert survivor["latency_ms"] is not None and survivor["latency_ms"]["n"] == 3
