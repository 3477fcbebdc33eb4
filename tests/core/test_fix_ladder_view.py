"""The fix page's reading of a run (core.reporting.fix_ladder): each cause's rungs, cheapest
first, matched to the run's derived variants by the name the fix makes, else to the auto-fix
search's measurement; and the re-score builds the same names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.jobs.rescore import _derived_spec, rescore_command
from core.reporting.fix_ladder import fix_variant, ladders, other_derived
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


def test_a_rescore_makes_the_variant_the_rung_names() -> None:
    for kind, layers in (
        ("equalize", ()),
        ("int16_activations", ("conv3", "conv2", "pool2")),
        ("keep_float", ("pool2", "conv2", "conv3")),
    ):
        derived = _derived_spec("int8", tuple(sorted(layers)), kind)
        assert derived.name == fix_variant("int8", kind, tuple(layers))
    eq = _derived_spec("int8", (), "equalize")
    assert eq.name == "int8:eq"
    assert rescore_command(Path("/r"), eq).endswith("--variant int8 --equalize")
    int16 = _derived_spec("int8", ("conv2", "conv3"), "int16_activations")
    assert rescore_command(Path("/r"), int16).endswith("--int16 conv2,conv3")


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
