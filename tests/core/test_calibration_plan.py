"""Which images calibrate and which are evaluated (held out by default at 2x the calibration
count), the new flags in the reproduce command and the CLI parser, and the sweep's summary and
flattening statement, on hand-made inputs whose answers are worked out here."""

from __future__ import annotations

import pytest

from core.engine.stages.decode import (
    HELD_OUT,
    NO_CALIBRATION,
    OVERLAPPING,
    SEPARATE,
    calibration_plan,
    select_samples,
)
from core.engine.stages.start import reproduce_command
from core.errors import QuantLensError
from core.reporting.sweep import flattens_at, size_summary, statement
from core.types import Dataset, JobSpec, Sample, parse_sweep_sizes


def _dataset(n: int, prefix: str = "img") -> Dataset:
    samples = tuple(
        Sample(index=i, path=f"/d/{prefix}{i}.png", relpath=f"{prefix}{i}.png") for i in range(n)
    )
    return Dataset(path="/d", kind="folder", samples=samples)


def _job(**kw: object) -> JobSpec:
    return JobSpec(model_path="/m", data_path="/d", variants=("int8",), **kw)  # type: ignore[arg-type]


def test_at_twice_the_calibration_count_the_pool_is_held_out_of_evaluation() -> None:
    data = _dataset(200)
    plan = calibration_plan(data, _job(calibration_samples=100), None)
    assert plan.source == HELD_OUT
    pool = {s.index for s in plan.pool}
    evaluable = {s.index for s in plan.evaluable}
    assert len(pool) == 100 and len(evaluable) == 100
    assert pool.isdisjoint(evaluable) and pool | evaluable == set(range(200))
    # --samples draws from what is left, never from the pool.
    drawn = select_samples(plan.evaluable, 30, seed=0)
    assert len(drawn) == 30 and pool.isdisjoint(s.index for s in drawn)


def test_below_twice_the_count_calibration_overlaps_and_says_why() -> None:
    plan = calibration_plan(_dataset(199), _job(calibration_samples=100), None)
    assert plan.source == OVERLAPPING
    assert len(plan.evaluable) == 199 and len(plan.pool) == 199
    assert "fewer than twice the 100" in plan.reason


def test_the_overlap_flag_keeps_every_image_in_evaluation() -> None:
    plan = calibration_plan(_dataset(1000), _job(calibration_overlap=True), None)
    assert plan.source == OVERLAPPING and len(plan.evaluable) == 1000


def test_a_separate_set_calibrates_and_nothing_is_held_out() -> None:
    other = _dataset(50, prefix="cal")
    plan = calibration_plan(_dataset(1000), _job(), other)
    assert plan.source == SEPARATE and len(plan.evaluable) == 1000
    assert sorted(s.relpath for s in plan.pool) == sorted(s.relpath for s in other.samples)


def test_the_sweep_widens_the_pool_to_its_largest_size_but_leaves_half_for_evaluation() -> None:
    plan = calibration_plan(_dataset(1000), _job(calibration_sweep=(10, 200)), None)
    assert len(plan.pool) == 200 and len(plan.evaluable) == 800
    small = calibration_plan(_dataset(300), _job(calibration_sweep=(10, 200)), None)
    assert len(small.pool) == 150 and len(small.evaluable) == 150  # capped at half


def test_nothing_is_held_out_when_no_variant_is_calibrated() -> None:
    job = JobSpec(model_path="/m", data_path="/d", variants=("float16", "dynamic"))
    plan = calibration_plan(_dataset(1000), job, None)
    assert plan.source == NO_CALIBRATION and len(plan.evaluable) == 1000


def test_the_reproduce_command_carries_the_calibration_flags() -> None:
    job = _job(
        calibration_data="/data/cal set",
        calibration_sweep=(10, 50, 100),
        sweep_seeds=2,
    )
    command = reproduce_command(job)
    assert "--calibration-data '/data/cal set'" in command
    assert "--calibration-sweep 10,50,100 --sweep-seeds 2" in command
    assert "--calibration-overlap" in reproduce_command(_job(calibration_overlap=True))
    assert "--calibration" not in reproduce_command(_job()).replace("--calibration-samples", "")


def test_sweep_sizes_parse_sorted_and_refuse_nonsense() -> None:
    assert parse_sweep_sizes("100, 10,50,10") == (10, 50, 100)
    assert parse_sweep_sizes(None) == () == parse_sweep_sizes("  ")
    for bad in ("ten", "0,10", ","):
        with pytest.raises(QuantLensError, match="calibration sweep sizes"):
            parse_sweep_sizes(bad)


def _points(values: dict[int, list[float]]) -> list[dict[str, float]]:
    return [
        {"size": size, "seed": seed, "agreement_pct": a, "mean_kl": 0.1 / size}
        for size, agreements in values.items()
        for seed, a in enumerate(agreements, start=1)
    ]


def test_the_curve_flattens_at_the_smallest_size_within_half_a_point_of_the_largest() -> None:
    # Means: n=10 90.0, n=50 97.0, n=100 97.4, n=200 97.3 -> 50 is within 0.5 of 97.3.
    points = _points({10: [89.0, 91.0], 50: [96.5, 97.5], 100: [97.4, 97.4], 200: [97.2, 97.4]})
    summary = size_summary(points)
    assert [r["size"] for r in summary] == [10, 50, 100, 200]
    assert summary[0]["agreement_mean"] == pytest.approx(90.0)
    assert (summary[0]["agreement_min"], summary[0]["agreement_max"]) == (89.0, 91.0)
    assert summary[1]["mean_kl_mean"] == pytest.approx(0.002)
    assert flattens_at(summary) == 50
    text = statement("int8", summary, 100)
    assert "flattens at n=50" in text and "the run's 100 calibration images are enough" in text
    assert "mean KL 0.01 at n=10, 0.0005 at n=200" in text  # 0.1 / size, as built above
    assert "use at least 50" in statement("int8", summary, 10)


def test_a_curve_still_rising_at_the_largest_size_says_so() -> None:
    summary = size_summary(_points({10: [80.0], 50: [90.0], 100: [95.0]}))
    assert flattens_at(summary) == 100
    assert "still changing at the largest size tried (n=100" in statement("int8", summary, 100)
    assert flattens_at(size_summary(_points({10: [80.0]}))) is None


def test_a_curve_that_dips_back_out_of_the_band_flattens_only_after_the_dip() -> None:
    # Means: n=10 97.2 (in the band of 97.3), n=50 95.0 (out), n=100 97.1, n=200 97.3: the
    # curve has not flattened at 10, since 50 falls out of the band again; it has at 100.
    summary = size_summary(_points({10: [97.2], 50: [95.0], 100: [97.1], 200: [97.3]}))
    assert flattens_at(summary) == 100
    assert "flattens at n=100" in statement("int8", summary, 100)
    # Every size in the band, even a non-monotone one: the smallest.
    assert flattens_at(size_summary(_points({10: [97.0], 50: [97.4], 100: [97.3]}))) == 10


def test_ray_sweep_outcomes_are_recorded_as_the_local_loop_records_them() -> None:
    """The Ray sweep gets every point's outcome at once; recorded in point order, a mode's
    first failure is its error (its earlier rows dropped, its later points left out), as when
    the local engine stops that mode at the failing point."""
    import numpy as np

    from core.engine.fixes.keep_float import Measurement
    from core.engine.stages.sweep import SweepPoint, record_in_order
    from core.reporting.sections.sweep_record import Sweep, SweepMode
    from core.types import Mode

    def point(mode: Mode, size: int, seed: int) -> SweepPoint:
        return SweepPoint(mode, size, seed, np.arange(size))

    points = [point(m, n, s) for m in (Mode.INT8, Mode.INT16X8) for n in (4, 8) for s in (1, 2)]
    good = Measurement(agreement_pct=75.0, mean_kl=0.01, size_bytes=1000, n=4)
    outcomes: dict[str, Measurement | str] = {p.name: good for p in points}
    outcomes["int8-n4-s2"] = "int8_q: evaluation failed"  # the mode's first failure
    outcomes["int8-n8-s1"] = "int8_q: the LiteRT Quantizer failed"  # later: not reported
    del outcomes["int8-n8-s2"]  # not made after the failure
    empty = Sweep(modes={"int8": SweepMode(), "int16x8": SweepMode()})
    section = record_in_order(empty, points, outcomes).to_dict()
    assert section["modes"]["int8"] == {"error": "int8_q: evaluation failed", "points": []}
    rows = section["modes"]["int16x8"]["points"]
    assert [(r["size"], r["seed"], r["file"]) for r in rows] == [
        (4, 1, "sweep/int16x8-n4-s1.tflite"),
        (4, 2, "sweep/int16x8-n4-s2.tflite"),
        (8, 1, "sweep/int16x8-n8-s1.tflite"),
        (8, 2, "sweep/int16x8-n8-s2.tflite"),
    ]
    # 3 of 4 agree: Wilson's 95 % interval worked out here (z: the normal 97.5 % quantile).
    z = 1.959963984540054
    centre = (0.75 + z * z / 8) / (1 + z * z / 4)
    half = z * np.sqrt(0.75 * 0.25 / 4 + z * z / 64) / (1 + z * z / 4)
    assert rows[0]["ci95"] == pytest.approx([100 * (centre - half), 100 * (centre + half)])
    assert (rows[0]["agreement_pct"], rows[0]["n"], rows[0]["mean_kl"]) == (75.0, 4, 0.01)
    assert rows[0]["size_bytes"] == 1000


def test_ray_sweep_points_share_a_cluster_pass_while_their_outputs_fit_a_gigabyte() -> None:
    """ImageNet's 50,000 x 1,000 float32 outputs are 200 MB a point: 5 points a pass (1 GiB);
    a small set runs every point in one pass."""
    import numpy as np

    from core.engine.stages.sweep import SweepPoint, cluster_passes
    from core.types import Mode

    points = [SweepPoint(Mode.INT8, n, 1, np.arange(n)) for n in range(1, 13)]
    passes = cluster_passes(points, 50_000, 1_000)
    assert [[p.size for p in group] for group in passes] == [
        [1, 2, 3, 4, 5],
        [6, 7, 8, 9, 10],
        [11, 12],
    ]
    assert cluster_passes(points, 528, 1_000) == [points]
    assert cluster_passes(points, 10**6, 10**4) == [[p] for p in points]  # one a pass at least
