"""Recommendation per target on crafted reports (pure functions, no model): the held-out case
where int16x8 is 30x slower than float32 TFLite, exclusions with their reasons, a derived
variant identical to its parent listed once, and the gpu target never faked. Every expected
pick and factor is worked out by hand in the comments."""

from __future__ import annotations

from typing import Any

from core.reporting.recommend import recommendation, recommendations
from core.reporting.sections.deployability import (
    CellStatus,
    Deployability,
    IntegerOnlyCell,
    MicroCell,
    VelaCell,
)
from core.reporting.targets import GPU_NOT_EVALUATED


def _deploy(
    *,
    integer: bool = True,
    arena: int | None = 27_184,
    missing_op: str | None = None,
    cpu_ops: int = 0,
    identical_to: str | None = None,
) -> dict[str, Any]:
    blockers = () if integer else ("CONV_2D conv2d (FLOAT32)", "MEAN pool (FLOAT32)")
    micro = (
        MicroCell(CellStatus.FAILS, missing_op=missing_op, reason="no kernel")
        if missing_op
        else MicroCell(CellStatus.OK, arena_bytes=arena)
    )
    vela = VelaCell(
        CellStatus.OK,
        npu_ops=50,
        cpu_ops=cpu_ops,
        cpu_op_types=("DEQUANTIZE", "QUANTIZE") if cpu_ops else (),
    )
    return Deployability(
        IntegerOnlyCell(integer, False, blockers), micro, vela, identical_to=identical_to
    ).to_dict()


def _variant(
    name: str,
    *,
    size: int,
    p50: float,
    agree: float,
    lower: float,
    verdict: str = "point",
    deploy: dict[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    passed = (lower if verdict == "lower-bound" else agree) >= 95.0
    return {
        "name": name,
        "mode": "int8",
        "status": "done",
        "size_bytes": size,
        "latency_ms": {"p50": p50},
        "top1_agreement_pct": agree,
        "top1_agreement_ci95": [lower, min(100.0, 2 * agree - lower)],
        "n": 500,
        "passed": passed,
        "verdict_reason": None,
        "deployability": deploy if deploy is not None else _deploy(),
        **extra,
    }


def _held_out(verdict: str, **options: Any) -> dict[str, Any]:
    """The held-out case: int8 agrees 95.7 % (lower bound 93.6 % at n=500) at 0.02 ms; int16x8
    clears the bound but takes 8.6 ms against float32 TFLite's 0.27 ms."""
    return {
        "options": {"min_agreement_pct": 95.0, "verdict": verdict, **options},
        "variants": [
            _variant(
                "float32",
                size=58_000,
                p50=0.27,
                agree=100.0,
                lower=99.2,
                verdict=verdict,
                deploy=_deploy(integer=False, arena=88_464),
            ),
            _variant("int8", size=33_000, p50=0.02, agree=95.7, lower=93.6, verdict=verdict),
            _variant("int16x8", size=36_000, p50=8.6, agree=99.0, lower=97.7, verdict=verdict),
        ],
    }


def test_held_out_case_recommends_int8_for_cpu_and_integer_only() -> None:
    report = _held_out("point")
    for target in ("cpu", "integer-only"):
        rec = recommendation(report, target)
        assert rec["variant"] == "int8", (target, rec)
        assert rec["slower_than_float32"] is None
        # 0.27 / 0.02 = 13.5x faster than float32 TFLite, from the p50s.
        assert "13.5× faster than float32 TFLite" in rec["reason"]
    # float32 computes in float: not runnable on an integer-only target, with the first op.
    rec = recommendation(report, "integer-only")
    assert rec["excluded"] == [
        {
            "variant": "float32",
            "reason": "computes in float: 2 ops (CONV_2D, MEAN)",
        }
    ]
    # On cpu, int16x8 (31.9x slower) ranks after float32 although it is smaller.
    assert recommendation(report, "cpu")["runner_up"] == "float32"


def test_when_only_int16x8_passes_the_words_say_it_is_slower_than_float32() -> None:
    report = _held_out("lower-bound")
    # float32 passes too on cpu (lower bound 99.2): it is picked there, being faster.
    assert recommendation(report, "cpu")["variant"] == "float32"
    rec = recommendation(report, "integer-only")  # float32 excluded: int16x8 alone passes
    assert rec["variant"] == "int16x8"
    factor = 8.6 / 0.27  # 31.9x, the p50s
    said = (
        f"int16x8 is {factor:.1f}× slower than float32 TFLite on the same runtime: no variant "
        "at least as fast passes"
    )
    assert rec["slower_than_float32"] == said
    assert said in rec["reason"]
    assert "a variant slower than float32 TFLite only when no faster one passes" in rec["rule"]


def test_the_paired_speedup_entry_decides_slower_before_the_p50s() -> None:
    report = _held_out("lower-bound")
    int16 = report["variants"][2]
    # Blocks say 0.04 (25x slower) against float32, vs the original 0.5 (2x slower).
    int16["speedup"] = {"baseline": "float32", "value": 0.04, "vs_original": {"value": 0.5}}
    rec = recommendation(report, "integer-only")
    assert rec["slower_than_float32"].startswith("int16x8 is 25.0× slower than float32 TFLite")
    assert (
        "25.0× slower than float32 TFLite on the same runtime (vs the TensorFlow original: 2.0× slower)"
        in rec["reason"]
    )


def test_mcu_excludes_a_missing_kernel_and_an_arena_over_the_limit() -> None:
    report = _held_out("point", arena_kb=30)
    report["variants"].append(
        _variant(
            "int8_big", size=30_000, p50=0.02, agree=96.0, lower=94.0, deploy=_deploy(arena=40_960)
        )
    )
    report["variants"].append(
        _variant(
            "int8_topk",
            size=20_000,
            p50=0.02,
            agree=97.0,
            lower=95.0,
            deploy=_deploy(missing_op="TOPK_V2"),
        )
    )
    rec = recommendation(report, "mcu")
    excluded = {e["variant"]: e["reason"] for e in rec["excluded"]}
    assert excluded["int8_big"] == "needs a 40.0 KiB arena, over the 30 KiB limit"  # 40960/1024
    assert excluded["int8_topk"] == "TFLite-Micro has no kernel for TOPK_V2"
    assert excluded["float32"].startswith("computes in float")
    assert rec["variant"] == "int8"  # 27,184 bytes = 26.5 KiB fits 30 KiB
    # Without a limit the larger arena is fine, and int8_big is the smaller file.
    assert recommendation(report, "mcu", arena_limit_kb=1e9)["variant"] == "int8_big"


def test_a_derived_variant_with_its_parents_outputs_is_listed_once() -> None:
    report = _held_out("point")
    report["variants"].append(
        _variant(
            "int8:keep=none",
            size=32_000,  # smaller, but the same model for the user
            p50=0.02,
            agree=95.7,
            lower=93.6,
            parent="int8",
            deploy=_deploy(identical_to="int8"),
        )
    )
    rec = recommendation(report, "cpu")
    assert rec["variant"] == "int8"
    assert rec["runner_up"] == "float32"
    assert rec["listed_once"] == [{"variant": "int8:keep=none", "same_as": "int8"}]


def test_integer_only_flags_a_pick_that_vela_leaves_partly_on_the_cpu() -> None:
    report = _held_out("point")
    report["variants"][1]["deployability"] = _deploy(cpu_ops=2)
    rec = recommendation(report, "integer-only")
    assert rec["variant"] == "int8"
    assert "Ethos-U: 2 of 52 ops on the CPU (DEQUANTIZE, QUANTIZE)" in rec["reason"]


def test_gpu_is_never_faked_and_every_target_gets_a_recommendation() -> None:
    report = _held_out("point", target="integer-only")
    rec = recommendation(report, "gpu")
    assert rec["variant"] is None and rec["reason"] == GPU_NOT_EVALUATED
    every = recommendations(report)
    assert list(every) == ["cpu", "integer-only", "mcu", "gpu"]
    # The run's own --target is the default.
    assert recommendation(report)["target"] == "integer-only"


def test_a_report_without_a_preflight_excludes_it_from_integer_only_saying_why() -> None:
    report = _held_out("point")
    for v in report["variants"]:
        del v["deployability"]
    rec = recommendation(report, "integer-only")
    assert rec["variant"] is None
    assert {e["reason"] for e in rec["excluded"]} == {
        "no deployability pre-flight in this report (re-run to check it)"
    }
    assert recommendation(report, "cpu")["variant"] == "int8"


def test_target_and_arena_limit_reach_the_job_and_the_reproduce_command(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from core import options
    from core.cli import _job_from_args, _parser
    from core.errors import QuantLensError

    model, data = tmp_path / "m.keras", tmp_path / "d.csv"
    model.write_bytes(b"")
    data.write_text("filepath,label\n", encoding="utf-8")
    base = ["run", str(model), "--data", str(data)]
    job = _job_from_args(_parser().parse_args([*base, "--target", "mcu", "--arena-kb", "256"]))
    assert (job.target, job.arena_kb) == ("mcu", 256.0)
    assert "--target mcu --arena-kb 256" in options.reproduce_command(job)
    plain = _job_from_args(_parser().parse_args(base))
    assert (plain.target, plain.arena_kb) == ("cpu", None)
    assert "--target" not in options.reproduce_command(plain)  # the default stays implicit
    try:
        _job_from_args(_parser().parse_args([*base, "--arena-kb", "0"]))
    except QuantLensError as exc:
        assert str(exc) == "--arena-kb must be at least 1; got 0.0"
    else:
        raise AssertionError("--arena-kb 0 was accepted")


def test_identical_outputs_means_the_same_bits(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from core.engine.stages.deploy import identical_outputs

    probs = np.random.default_rng(0).random((6, 4)).astype(np.float32)
    changed = probs.copy()
    changed[1, 1] = np.nextafter(changed[1, 1], np.float32(2))  # one value, one ulp up
    paths = {}
    for name, array in (
        ("parent", probs),
        ("same", probs.copy()),
        ("changed", changed),
        ("float64", probs.astype(np.float64)),
    ):
        paths[name] = tmp_path / f"{name}.probs.npy"
        np.save(paths[name], array)
    assert identical_outputs(paths["same"], paths["parent"])
    assert not identical_outputs(paths["changed"], paths["parent"])  # one value moved
    assert not identical_outputs(paths["float64"], paths["parent"])  # same numbers, other type
    assert not identical_outputs(tmp_path / "missing.npy", paths["parent"])


def test_a_variant_is_slower_only_when_every_timing_block_says_so() -> None:
    report = _held_out("lower-bound")
    int16 = report["variants"][2]
    # Median block 0.9 (1.1x slower) but one block at 1.05: timing noise, not slower.
    int16["speedup"] = {"baseline": "float32", "value": 0.9, "low": 0.8, "high": 1.05}
    assert recommendation(report, "integer-only")["slower_than_float32"] is None
    # Every block below 1 (0.8-0.95): slower, by the median block's 1/0.9 = 1.1x.
    int16["speedup"] = {"baseline": "float32", "value": 0.9, "low": 0.8, "high": 0.95}
    said = recommendation(report, "integer-only")["slower_than_float32"]
    assert said.startswith("int16x8 is 1.1× slower than float32 TFLite")


def test_mcu_judges_by_the_reference_kernels_when_the_run_measured_them() -> None:
    """int8 agrees 95.7 % under XNNPACK but 93.0 % (186 of 200) under the reference kernels,
    which a microcontroller runs: with the matrix, mcu must not pick it on XNNPACK's figure;
    cpu still does. Without the matrix, mcu falls back to the run's figure."""
    report = _held_out("point")
    report["variants"] = [v for v in report["variants"] if v["name"] != "int16x8"]
    assert recommendation(report, "mcu")["variant"] == "int8"
    report["runtimes"] = {
        "runtimes": ["xnnpack", "reference"],
        "total": 500,
        "subset": 200,
        "cells": [
            {"variant": "int8", "runtime": "reference", "n": 200, "agree": 186,
             "agreement_pct": 93.0, "ci_low_pct": 88.6, "ci_high_pct": 95.8},
        ],
    }  # fmt: skip
    assert recommendation(report, "cpu")["variant"] == "int8"
    mcu = recommendation(report, "mcu")
    assert mcu["variant"] != "int8"
    report["runtimes"]["cells"][0].update(agree=196, agreement_pct=98.0, ci_low_pct=95.0)
    mcu = recommendation(report, "mcu")
    assert mcu["variant"] == "int8"
    assert "98.0 %" in mcu["reason"] and "n=200 under the reference kernels" in mcu["reason"]
