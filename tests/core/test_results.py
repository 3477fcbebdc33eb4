"""RunResults reads a run directory back consistently with the files the engine writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.errors import QuantLensError
from core.inputs import rundir
from core.reporting.results import load_results, per_class_agreement, pick_samples
from tests.app.fixtures import CLASSES, build_run


@pytest.fixture
def run(tmp_path: Path) -> Path:
    return build_run(tmp_path, flips={"float16": 0, "int8": 6})


def test_report_fields_and_variant_lookup(run: Path) -> None:
    res = load_results(run)
    assert res.run_id == "run-fixture"
    assert res.variant_names() == ["float16", "int8", "int16x8"]
    assert res.variant_names(finished_only=True) == ["float16", "int8"]
    assert res.class_names == tuple(CLASSES)
    assert res.num_classes == 10 and res.threshold_pct == 95.0
    with pytest.raises(QuantLensError, match="no variant 'nope'"):
        res.variant("nope")


def test_variant_samples_join_and_disagreement_count(run: Path) -> None:
    res = load_results(run)
    df = res.variant_samples("int8")
    raw = pd.read_csv(rundir.variant_samples_path(run, rundir.FileId("int8")))
    assert len(df) == len(raw) == 40
    assert int((~df["agree"]).sum()) == res.variant("int8")["disagreements"] == 6
    assert (df["row"].to_numpy() == np.arange(40)).all()
    probs = res.probs("int8")
    assert probs is not None and probs.shape == (40, 10)
    assert (probs.argmax(1) == df["tfl_top1"].to_numpy()).all()


def test_pick_samples_filters(run: Path) -> None:
    df = load_results(run).variant_samples("int8")
    dis = pick_samples(df)
    assert len(dis) == 6 and not dis["agree"].any()
    assert list(dis["abs_top1_prob_delta"]) == sorted(dis["abs_top1_prob_delta"], reverse=True)
    first = dis.iloc[0]
    cell = pick_samples(df, flip=(int(first["ref_top1"]), int(first["tfl_top1"])))
    assert 1 <= len(cell) <= 6
    assert (cell["ref_top1"] == first["ref_top1"]).all()
    risky = pick_samples(df, at_risk_margin=0.99)
    assert risky["agree"].all() and (risky["ref_margin"] < 0.99).all()
    assert len(risky) == int((df["agree"] & (df["ref_margin"] < 0.99)).sum())


def test_image_paths_stay_inside_the_data_root(run: Path) -> None:
    res = load_results(run)
    assert res.image_path("img/s000.png") is not None
    assert res.image_path("../../etc/passwd") is None
    assert res.image_path("/etc/passwd") is None


def test_missing_report_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    with pytest.raises(QuantLensError, match="has no report yet"):
        load_results(tmp_path / "runs" / "r1")
    (tmp_path / "runs" / "r1" / "report.json").write_text("{not json")
    with pytest.raises(QuantLensError, match="unreadable"):
        load_results(tmp_path / "runs" / "r1")


def test_near_chance_flag(tmp_path: Path) -> None:
    assert load_results(build_run(tmp_path / "a")).reference_near_chance is False
    assert load_results(build_run(tmp_path / "b", near_chance=True)).reference_near_chance


def test_per_class_agreement_worst_first_with_wilson_intervals() -> None:
    # class 0: 5/5 agree, class 1: 3/4, class 2: 1/2, class 3: 2/4 (ties class 2 at 50 %).
    ref = [0] * 5 + [1] * 4 + [2] * 2 + [3] * 4
    agree = [True] * 5 + [True, True, True, False] + [False, True] + [True, False, False, True]
    df = pd.DataFrame({"ref_top1": ref, "agree": agree})
    table = per_class_agreement(df)
    # Worst first; the 50 % tie puts the class with more samples first.
    assert table["class"].tolist() == [3, 2, 1, 0]
    assert table["n"].tolist() == [4, 2, 4, 5]
    assert table["agree"].tolist() == [2, 1, 3, 5]
    assert table["agreement_pct"].tolist() == [50.0, 50.0, 75.0, 100.0]
    # 95 % Wilson intervals from published tables: 2/4 -> 15.00-85.00 %, 1/2 -> 9.45-90.55 %,
    # 3/4 -> 30.06-95.44 %, 5/5 -> 56.55-100 %.
    expected = [(15.00, 85.00), (9.45, 90.55), (30.06, 95.44), (56.55, 100.0)]
    got = list(zip(table["ci95_low_pct"], table["ci95_high_pct"], strict=True))
    for (lo, hi), (elo, ehi) in zip(got, expected, strict=True):
        assert lo == pytest.approx(elo, abs=0.01) and hi == pytest.approx(ehi, abs=0.01)


def test_per_class_agreement_of_an_empty_table_is_empty() -> None:
    assert per_class_agreement(pd.DataFrame(columns=["ref_top1", "agree"])).empty
