"""Interleaved timing blocks, the speed-up with its spread over blocks, and the usable CPUs.

Pure tests: crafted samples and fake models that only count calls; no wall-clock assertions.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from core.engine.timing import time_interleaved
from core.metrics.latency import (
    block_sizes,
    default_threads,
    interleaved_schedule,
    speedup_spread,
    split_blocks,
    usable_cpus,
)

# -- the block scheduler ------------------------------------------------------------------------


def test_the_schedule_rotates_one_block_per_model_until_each_has_its_runs() -> None:
    order = interleaved_schedule({"A": 10, "B": 10}, blocks=5)
    assert [name for name, _ in order] == ["A", "B"] * 5  # ABAB…, never AAAAA BBBBB
    assert [k for _, k in order] == [2] * 10
    three = interleaved_schedule({"ref": 7, "f32": 12, "int8": 30}, blocks=3)
    assert [n for n, _ in three] == ["ref", "f32", "int8"] * 3
    totals = {name: sum(k for n, k in three if n == name) for name in ("ref", "f32", "int8")}
    assert totals == {"ref": 7, "f32": 12, "int8": 30}
    assert all(k >= 1 for _, k in three)


def test_fewer_runs_than_blocks_gives_every_model_that_many_blocks() -> None:
    order = interleaved_schedule({"A": 3, "B": 100}, blocks=5)
    assert [n for n, _ in order] == ["A", "B"] * 3  # paired: every model has 3 blocks
    assert [k for n, k in order if n == "A"] == [1, 1, 1]
    assert sum(k for n, k in order if n == "B") == 100


def test_block_sizes_split_nearly_evenly() -> None:
    assert block_sizes(11, 5) == [3, 2, 2, 2, 2]
    assert block_sizes(2, 5) == [1, 1]
    with pytest.raises(ValueError):
        block_sizes(0, 5)


def test_time_interleaved_calls_the_models_in_rotating_blocks() -> None:
    """The calls really happen in the scheduled order, warm-up first, and each model's samples
    are its own calls in call order."""
    calls: list[str] = []
    invokes = {name: (lambda n=name: calls.append(n)) for name in ("A", "B", "C")}
    timed = time_interleaved(invokes, runs=6, warmup=2, blocks=3)
    assert calls[:6] == ["A", "A", "B", "B", "C", "C"]  # warm-up, untimed
    assert calls[6:] == ["A", "A", "B", "B", "C", "C"] * 3
    for t in timed.values():
        assert t.samples.size == 6 and t.blocks == [2, 2, 2]
        assert [b.size for b in t.split()] == [2, 2, 2]


def test_a_budgeted_session_gives_every_model_the_same_number_of_blocks() -> None:
    calls: list[str] = []
    invokes = {name: (lambda n=name: calls.append(n)) for name in ("A", "B")}
    timed = time_interleaved(invokes, runs=None, warmup=0, budget_s=0.01, blocks=4)
    assert len(timed["A"].blocks) == len(timed["B"].blocks) == 4
    assert all(t.samples.size >= 10 for t in timed.values())  # MIN_BUDGETED_RUNS


# -- the speed-up with its spread ----------------------------------------------------------------


def _ratios_by_hand(base: list[list[float]], mine: list[list[float]]) -> list[float]:
    out = []
    for b, m in zip(base, mine, strict=True):
        sb, sm = sorted(b), sorted(m)
        mb = sb[len(sb) // 2] if len(sb) % 2 else (sb[len(sb) // 2 - 1] + sb[len(sb) // 2]) / 2
        mm = sm[len(sm) // 2] if len(sm) % 2 else (sm[len(sm) // 2 - 1] + sm[len(sm) // 2]) / 2
        out.append(mb / mm)
    return out


def test_the_speed_up_is_the_median_block_ratio_with_its_range() -> None:
    base = [[4.0, 4.2, 3.8], [4.1, 4.0, 4.4], [3.9, 4.0, 4.1], [4.0, 4.6, 4.2]]
    mine = [[2.0, 2.1, 1.9], [2.0, 2.2, 1.8], [1.6, 2.0, 2.0], [2.1, 2.1, 2.0]]
    spread = speedup_spread(base, mine)
    by_hand = _ratios_by_hand(base, mine)  # 4.0/2.0, 4.1/2.0, 4.0/2.0, 4.2/2.1
    assert by_hand == pytest.approx([2.0, 2.05, 2.0, 2.0])
    assert spread.block_ratios == pytest.approx(by_hand)
    assert spread.value == pytest.approx(2.0)  # median of 2.0, 2.0, 2.0, 2.05
    assert (spread.low, spread.high) == pytest.approx((2.0, 2.05))
    assert spread.blocks == 4
    assert spread.unstable is None


def test_blocks_that_disagree_are_flagged() -> None:
    """The machine got busy for the variant's last two blocks only in this crafted session:
    its per-block speed-up fell from 10× to 2×, and the headline must not hide it."""
    base = [[10.0] * 5] * 4
    mine = [[1.0] * 5, [1.0] * 5, [5.0] * 5, [5.0] * 5]
    spread = speedup_spread(base, mine)
    assert spread.block_ratios == pytest.approx([10.0, 10.0, 2.0, 2.0])
    assert spread.value == pytest.approx(6.0)
    assert spread.unstable == "unstable: blocks disagree by 5.0×"
    assert spread.to_dict()["unstable"] == spread.unstable


def test_a_load_change_that_hits_both_models_alike_is_not_flagged() -> None:
    """Interleaving's point: a busy half doubles both models' times, the ratio stays put."""
    base = [[6.0] * 3, [6.0] * 3, [12.0] * 3, [12.0] * 3]
    mine = [[2.0] * 3, [2.0] * 3, [4.0] * 3, [4.0] * 3]
    spread = speedup_spread(base, mine)
    assert spread.value == pytest.approx(3.0) and spread.unstable is None


def test_blocks_that_disagree_alone_do_not_start_a_second_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A speed-up whose blocks disagree carries its own `unstable` line; only a model whose own
    samples are unstable is timed again (a second session doubled the bench's timing stage)."""
    from types import SimpleNamespace

    from core.engine.stages import latency
    from core.engine.timing import TimedModel

    def drifting(block_medians: list[float]) -> TimedModel:
        # 20 runs per block around each median: each model's own spread stays narrow.
        samples = np.concatenate([m * np.linspace(0.99, 1.01, 20) for m in block_medians])
        return TimedModel(samples=samples, blocks=[20] * len(block_medians))

    session = {
        latency.ORIGINAL: drifting([5.0] * 5),
        latency.BASELINE: drifting([1.0, 1.1, 1.2, 1.3, 1.4]),  # the load rose ...
        "int8": drifting([1.4, 1.3, 1.2, 1.1, 1.0]),  # ... as this one's fell
    }
    spread = speedup_spread(session["float32"].split(), session["int8"].split())
    assert spread.unstable is not None  # the blocks disagree (1.96×) ...
    assert latency.unstable_models(session) == {}  # ... but no model's own samples do

    sessions: list[int] = []

    def timed_session(*_: object, **__: object) -> dict[str, TimedModel]:
        sessions.append(1)
        return session

    monkeypatch.setattr(latency, "time_interleaved", timed_session)
    job = SimpleNamespace(latency_runs=100, warmup_runs=5, latency_budget_s=2.0)
    run = SimpleNamespace(job=job, emit=lambda *args: None)
    timed, warnings = latency.stable_session(run, {}, ["float32", "int8"])  # type: ignore[arg-type]
    assert (len(sessions), warnings, timed) == (1, {}, session)

    # A model whose own samples split into two clusters is timed once more, and says so.
    rng = np.random.default_rng(0)
    session["int8"] = TimedModel(
        samples=rng.permutation(np.r_[np.full(50, 1.0), np.full(50, 3.0)]), blocks=[20] * 5
    )
    _, warnings = latency.stable_session(run, {}, ["float32", "int8"])  # type: ignore[arg-type]
    assert len(sessions) == 3 and list(warnings) == ["int8"]
    assert "two clusters" in warnings["int8"] and "measured twice" in warnings["int8"]


def test_split_blocks_cuts_samples_back_into_their_blocks() -> None:
    parts = split_blocks([1, 2, 3, 4, 5], [2, 3])
    assert [p.tolist() for p in parts] == [[1.0, 2.0], [3.0, 4.0, 5.0]]
    with pytest.raises(ValueError):
        split_blocks([1, 2], [3])


def test_unpaired_blocks_are_refused() -> None:
    with pytest.raises(ValueError, match="same number of blocks"):
        speedup_spread([[1.0]], [[1.0], [2.0]])


# -- usable CPUs ----------------------------------------------------------------------------------


def test_the_affinity_mask_is_honoured(tmp_path: Path) -> None:
    """Two CPUs allowed on a host of 64: two usable, one thread by default."""
    assert usable_cpus(cgroup_root=tmp_path, affinity={3, 17}) == 2
    if hasattr(os, "sched_getaffinity"):
        assert usable_cpus(cgroup_root=tmp_path) == len(os.sched_getaffinity(0))


def test_a_cgroup_v2_quota_caps_the_count(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    assert usable_cpus(cgroup_root=tmp_path, affinity=set(range(64))) == 2
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # 1.5 CPUs: two threads
    assert usable_cpus(cgroup_root=tmp_path, affinity=set(range(64))) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")  # no quota: the mask decides
    assert usable_cpus(cgroup_root=tmp_path, affinity=set(range(8))) == 8


def test_a_cgroup_v1_quota_caps_the_count(tmp_path: Path) -> None:
    cpu = tmp_path / "cpu,cpuacct"
    cpu.mkdir()
    (cpu / "cpu.cfs_quota_us").write_text("300000\n")
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cpus(cgroup_root=tmp_path, affinity=set(range(64))) == 3
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")  # unlimited
    assert usable_cpus(cgroup_root=tmp_path, affinity=set(range(64))) == 64


def test_default_threads_leave_one_usable_cpu_free() -> None:
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = Path("/sys/fs/cgroup/cpu.max")
    if quota.is_file() and quota.read_text().split()[0] != "max":
        q, p = (int(x) for x in quota.read_text().split())
        expected = min(expected or 1, -(-q // p))
    assert default_threads() == max(1, (expected or 1) - 1)


def test_samples_are_floats_in_milliseconds() -> None:
    timed = time_interleaved({"A": lambda: None}, runs=4, warmup=0, blocks=2)
    assert timed["A"].samples.dtype == np.float64 and timed["A"].blocks == [2, 2]


# -- a real run ----------------------------------------------------------------------------------


def _median_ratio(base: np.ndarray, mine: np.ndarray, sizes_b: list[int], sizes_m: list[int]):  # type: ignore[no-untyped-def]
    """The speed-up recomputed from stored samples: cut each side at its block sizes, take
    each block's median, divide block by block, take the median of the ratios."""
    cut_b = np.cumsum([0, *sizes_b])
    cut_m = np.cumsum([0, *sizes_m])
    ratios = [
        float(np.median(base[cut_b[i] : cut_b[i + 1]]))
        / float(np.median(mine[cut_m[i] : cut_m[i + 1]]))
        for i in range(len(sizes_b))
    ]
    return float(np.median(ratios)), min(ratios), max(ratios)


@pytest.mark.slow
def test_a_real_run_states_its_speed_ups_from_interleaved_same_session_samples(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    from core.engine.pipeline import run_job
    from core.inputs import rundir
    from core.types import JobSpec, Preset

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job = JobSpec(
        model_path=str(tiny_models["keras"]),
        data_path=str(tiny_data),
        variants=("int8", "float16"),
        preset=Preset.UNIT,
        threads=1,
        latency_runs=10,
        warmup_runs=1,
    )
    events: list = []  # type: ignore[type-arg]
    report = run_job(job, run_dir, progress=events.append, cache_dir=None)
    by_name = {v["name"]: v for v in report["variants"]}
    assert set(by_name) == {"int8", "float16", "float32"}  # float32 joined as the pivot
    samples = {"reference": np.load(run_dir / rundir.REFERENCE_LATENCY)}
    blocks = {"reference": report["reference"]["latency_ms"]["blocks"]}
    for name, v in by_name.items():
        samples[name] = np.load(rundir.latency_path(run_dir, rundir.entry_files(v)))
        blocks[name] = v["latency_ms"]["blocks"]
    # Every model was timed in the same five paired blocks of two runs: one session.
    for name, arr in samples.items():
        assert arr.size == 10 and blocks[name] == [2, 2, 2, 2, 2], name
    timing = [e.message for e in events if e.step == "latency"]
    assert any("interleaved blocks" in m for m in timing), timing
    for name in ("int8", "float16"):
        sp = by_name[name]["speedup"]
        assert sp["baseline"] == "float32" and sp["blocks"] == 5
        value, low, high = _median_ratio(samples["float32"], samples[name], [2] * 5, [2] * 5)
        assert sp["value"] == pytest.approx(value, rel=1e-12)
        assert (sp["low"], sp["high"]) == pytest.approx((low, high), rel=1e-12)
        assert (sp["unstable"] is not None) == (high / low > 1.5)
        original = sp["vs_original"]
        value, low, high = _median_ratio(samples["reference"], samples[name], [2] * 5, [2] * 5)
        assert original["value"] == pytest.approx(value, rel=1e-12)
        assert by_name[name]["speedup_vs_reference"] == original["value"]
    # float32 is the baseline itself: no headline factor, only the comparison with TensorFlow.
    assert by_name["float32"]["speedup"]["value"] is None
    assert by_name["float32"]["speedup"]["baseline"] == "float32"
    env = report["environment"]
    assert env["cpu_count"] == os.cpu_count()
    assert 1 <= env["usable_cpus"] <= env["cpu_count"]


@pytest.mark.slow
def test_a_run_without_a_float32_variant_still_times_float32_tflite_as_the_baseline(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    """`float32+tf` alone adds no pivot: float32 TFLite is converted and timed anyway, so the
    speed-up still has its baseline on the same runtime."""
    from core.engine.pipeline import run_job
    from core.types import JobSpec, Preset

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    job = JobSpec(
        model_path=str(tiny_models["keras"]),
        data_path=str(tiny_data),
        variants=("float32+tf",),
        preset=Preset.UNIT,
        threads=1,
        latency_runs=4,
        warmup_runs=1,
    )
    events: list = []  # type: ignore[type-arg]
    report = run_job(job, run_dir, progress=events.append, cache_dir=None)
    assert [v["name"] for v in report["variants"]] == ["float32+tf"]
    speedup = report["variants"][0]["speedup"]
    assert speedup["baseline"] == "float32" and speedup.get("missing") is None
    assert speedup["blocks"] == 4 and len(speedup["baseline_block_p50_ms"]) == 4
    ratios = np.array(speedup["baseline_block_p50_ms"]) / np.array(speedup["block_p50_ms"])
    assert speedup["value"] == pytest.approx(float(np.median(ratios)))
    assert any("float32" in e.message and "interleaved" in e.message for e in events)
