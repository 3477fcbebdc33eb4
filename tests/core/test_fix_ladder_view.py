"""The fix page's reading of a run (core.reporting.fix_ladder): each cause's rungs, cheapest
first, matched to the run's derived variants by the name the fix makes, else to the auto-fix
search's measurement; and the one naming rule the ladder, the re-score and the page share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.errors import QuantLensError
from core.fix_variants import fix_variant_name
from core.jobs.rescore import _derived_spec, rescore_command
from core.reporting.fix_ladder import ladders, other_derived
from core.reporting.sections.variant import Variant

CHAIN = ["conv2", "pool2", "conv3"]


def _entry(name: str, agreement: float, size: int, p50: float, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "mode": "int8",
        "status": "done",
        "n": 528,
        "top1_agreement_pct": agreement,
        "size_bytes": size,
        "latency_ms": {"p50": p50},
        **extra,
    }


def _entries() -> list[dict[str, Any]]:
    parent = _entry(
        "int8",
        12.88,
        21_512,
        0.010,
        diagnosis={
            "causes": [
                {
                    "layer": "conv2",
                    "layers": CHAIN,
                    "cause": "outlier_channel",
                    "words": "conv2 → pool2 → conv3: one channel spans 995× the range",
                    "fixes": ["keep_float", "equalize", "int16_activations", "weight_only"],
                    "evidence": {"range_ratio": 995.0},
                }
            ],
            "causes_measured_on": {"calibration_images": 50, "evaluated_images": 50},
        },
        auto_fix={
            "search": {
                "seed": 0,
                "selected_rows": list(range(264)),
                "held_out_rows": list(range(264, 528)),
                "budget": 8,
                "evaluations": 3,
                "truncated": False,
                "candidates": [
                    {
                        "kind": "equalize",
                        "variant": "int8:eq",
                        "parent": "int8",
                        "fix": {"kind": "equalize"},
                        "status": "measured",
                        "agreement_pct": 99.6,
                        "n": 264,
                        "integer_only": True,
                    },
                    {
                        "kind": "int16_activations",
                        "variant": "int8_q:int16=conv2+conv3+pool2",
                        "parent": "int8",
                        "fix": {"kind": "int16_activations", "layers": CHAIN},
                        "status": "measured",
                        "agreement_pct": 99.0,
                        "n": 264,
                        "size_bytes": 22_000,
                        "p50_ms": 0.5,
                        "integer_only": True,
                        "note": "reference kernels on CPU",
                    },
                    {
                        "kind": "weight_only",
                        "variant": None,
                        "parent": "int8",
                        "fix": {"kind": "weight_only"},
                        "status": "skipped",
                        "reason": "not built in this version",
                    },
                ],
                "pareto": [],
                "chosen": "int8:eq",
                "chosen_meets_bar": True,
                "parent_agreement_pct": 13.0,
            }
        },
    )
    equalized = _entry("int8:eq", 99.5, 21_512, 0.011, parent="int8", equalized=True)
    manual = _entry("int8:keep=conv3+probabilities", 33.3, 49_584, 0.009, parent="int8")
    manual["float_layers"] = ["conv3", "probabilities"]
    return [parent, equalized, manual]


def _run() -> list[Variant]:
    return [Variant.from_dict(e) for e in _entries()]


def test_rungs_cheapest_first_with_the_runs_variant_or_the_searchs_numbers() -> None:
    variants = _run()
    (ladder,) = ladders(variants[0], variants)
    kinds = [r.kind for r in ladder.rungs]
    assert kinds == ["equalize", "int16_activations", "weight_only", "keep_float"]
    eq, int16, weight_only, keep = ladder.rungs
    # In the run: its numbers on every image against the parent's (integer-only as the search
    # read it from the same variant's .tflite).
    assert eq.variant == "int8:eq" and eq.tried and eq.integer_only is True
    assert eq.agreement_delta_pts == 99.5 - 12.88 and eq.bytes_delta == 0
    assert abs((eq.latency_delta_ms or 0) - 0.001) < 1e-12
    # Only measured by the search: its images, against the parent on the same images.
    assert not int16.tried and int16.searched and int16.n == 264
    assert int16.agreement_delta_pts == 99.0 - 13.0 and int16.bytes_delta == 22_000 - 21_512
    assert int16.name == "int8_q:int16=conv2+conv3+pool2" and int16.integer_only is True
    # Skipped by the search, with its reason, under the name the fix would make.
    assert weight_only.status == "skipped" and weight_only.error == "not built in this version"
    assert weight_only.name == "int8_q:wo=conv2" and not weight_only.tried
    # Never tried: the whole chain in float, the variant name a re-score would add.
    assert keep.status is None and keep.name == "int8:keep=conv2+conv3+pool2"
    assert keep.integer_only_expected is False
    (other,) = other_derived(variants[0], variants, [ladder])
    assert other.variant == "int8:keep=conv3+probabilities" and other.kind == "keep_float"


def test_one_rule_names_each_fixs_variant_and_refuses_what_it_cannot_make() -> None:
    """core.fix_variants is the only place a fix's variant is named: the ladder, the re-score
    and the fix page all call it. The names are the variant vocabulary's (parsed back to the
    same fix); a fix no name spells, or a parent that cannot take it, is refused in one line."""
    from core.errors import QuantLensError
    from core.fix_variants import fixed_spec
    from core.types import Backend, VariantSpec

    int8 = VariantSpec.parse("int8")
    for kind, layers, name in (
        ("equalize", (), "int8:eq"),
        ("bias_correction", ("conv3", "conv2"), "int8:bc=conv2+conv3"),
        ("int16_activations", ("conv3", "conv2", "pool2"), "int8_q:int16=conv2+conv3+pool2"),
        ("weight_only", ("conv2",), "int8_q:wo=conv2"),
        ("keep_float", ("pool2", "conv2", "conv3", "conv2"), "int8:keep=conv2+conv3+pool2"),
    ):
        derived = fixed_spec(int8, kind, layers)
        assert derived.name == name and VariantSpec.parse(name) == derived
        assert fix_variant_name("int8", kind, layers) == name
    assert fixed_spec(int8, "int16_activations", ("a",)).backend is Backend.QUANTIZER
    # A derived parent's 16-bit chain starts from its root: the overrides do not stack.
    assert fixed_spec(VariantSpec.parse("int8:eq"), "int16_activations", ("a",)).name == (
        "int8_q:int16=a"
    )
    with pytest.raises(QuantLensError, match="derived makes no variant"):
        fixed_spec(int8, "derived", ("conv2",))
    with pytest.raises(QuantLensError, match="the model's ends have no name to correct"):
        fixed_spec(int8, "bias_correction", ("(model output)",))
    with pytest.raises(QuantLensError, match=r"float16.*:eq"):
        fixed_spec(VariantSpec.parse("float16"), "equalize")
    assert fix_variant_name("float16", "equalize", ()) is None
    assert fix_variant_name("float32", "keep_float", ("conv2",)) is None


def test_a_rescore_adds_the_variant_its_rung_names_with_the_command_that_adds_it() -> None:
    eq = _derived_spec("int8", (), "equalize")
    assert eq.name == fix_variant_name("int8", "equalize", ()) == "int8:eq"
    assert rescore_command(Path("/r"), eq).endswith("--variant int8 --equalize")
    int16 = _derived_spec("int8", ("conv2", "conv3"), "int16_activations")
    assert rescore_command(Path("/r"), int16).endswith("--int16 conv2,conv3")
    with pytest.raises(QuantLensError, match="float16 cannot be equalized"):
        _derived_spec("float16", (), "equalize")


def test_a_measured_weight_only_rung_and_the_keep_float_walk_show_their_numbers() -> None:
    """The search measured weight-only on the culprit and walked keep-float over its own layer
    sets (never the chain itself): both rungs carry the search's numbers, not "not tried"."""
    entries = _entries()
    search = entries[0]["auto_fix"]["search"]
    search["candidates"][2] = {
        "kind": "weight_only",
        "variant": "int8_q:wo=conv2",
        "parent": "int8",
        "fix": {"kind": "weight_only", "layers": ["conv2"]},
        "status": "measured",
        "agreement_pct": 11.7,
        "n": 264,
        "integer_only": False,
    }
    for layers, agreement in ((["conv3"], 36.4), (["conv2", "conv3", "pool1", "pool2"], 100.0)):
        search["candidates"].append(
            {
                "kind": "keep_float",
                "variant": "int8:keep=" + "+".join(layers),
                "parent": "int8",
                "fix": {"kind": "keep_float", "layers": layers},
                "status": "measured",
                "agreement_pct": agreement,
                "n": 264,
                "size_bytes": 61_592,
                "integer_only": False,
            }
        )
    variants = [Variant.from_dict(e) for e in entries]
    (ladder,) = ladders(variants[0], variants)
    weight_only, keep = ladder.rungs[2], ladder.rungs[3]
    assert weight_only.name == "int8_q:wo=conv2" and weight_only.searched
    assert weight_only.agreement_pct == 11.7 and weight_only.integer_only is False
    assert keep.searched and keep.name == "int8:keep=conv2+conv3+pool1+pool2"
    assert keep.layers == ("conv2", "conv3", "pool1", "pool2") and keep.agreement_pct == 100.0
