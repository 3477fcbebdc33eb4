"""The three-way split (issue 12 item 4): a quantized variant's disagreements with the original
are conversion-caused when the float32 TFLite pivot already disagrees, quantization-caused when
it agrees. Pure functions on hand-made arrays, the pivot's role in the report, and a real CLI run
whose split an independent recomputation from the written files reproduces."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core.metrics.agreement import disagreement_causes, sample_records, split_counts
from core.reporting.report import (
    PIVOT_SPEC,
    ROLE_PIVOT,
    ROLE_SELECTED,
    exit_status,
    finished_variant,
    pending_variant,
    pivot_name,
    verdict,
    with_pivot,
)
from core.types import Agreement, VariantSpec

REPO = Path(__file__).resolve().parents[2]


def test_each_disagreement_gets_the_cause_the_pivot_decides() -> None:
    #        sample:  0     1      2      3      4
    variant = np.array([True, False, False, True, False])
    pivot = np.array([True, True, False, False, False])
    causes = disagreement_causes(variant, pivot)
    # 1: pivot agrees -> quantization; 2, 4: pivot disagrees too -> conversion;
    # 3: the variant agrees (the pivot's own flip was undone): no cause.
    assert list(causes) == ["", "quantization", "conversion", "", "conversion"]
    assert split_counts(causes) == {"conversion": 2, "quantization": 1}


def test_nan_rows_are_blamed_on_the_model_that_produced_them() -> None:
    ref = np.array(
        [
            [0.7, 0.2, 0.1],  # 0: all three agree on class 0
            [0.6, 0.3, 0.1],  # 1: the variant flips to class 1, the pivot does not
            [0.5, 0.4, 0.1],  # 2: pivot and variant both flip to class 1
            [0.8, 0.1, 0.1],  # 3: the variant outputs NaN, the pivot is fine
            [0.1, 0.8, 0.1],  # 4: the pivot outputs NaN, the variant happens to agree
            [0.2, 0.1, 0.7],  # 5: the pivot outputs NaN and the variant flips
        ]
    )
    pivot = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.6, 0.3, 0.1],
            [0.4, 0.5, 0.1],
            [0.8, 0.1, 0.1],
            [np.nan, np.nan, np.nan],
            [np.nan, np.nan, np.nan],
        ]
    )
    variant = np.array(
        [
            [0.6, 0.3, 0.1],
            [0.3, 0.6, 0.1],
            [0.3, 0.6, 0.1],
            [np.nan, np.nan, np.nan],
            [0.1, 0.8, 0.1],
            [0.6, 0.2, 0.2],
        ]
    )
    causes = disagreement_causes(
        sample_records(ref, variant).agree, sample_records(ref, pivot).agree
    )
    assert list(causes) == ["", "quantization", "conversion", "quantization", "", "conversion"]
    assert split_counts(causes) == {"conversion": 2, "quantization": 2}


def test_the_split_refuses_arrays_of_different_samples() -> None:
    with pytest.raises(ValueError, match="different samples"):
        disagreement_causes(np.array([True, False]), np.array([True]))


def test_the_pivot_joins_only_when_a_variant_is_quantized() -> None:
    def names(text: str) -> list[str]:
        return [s.name for s in with_pivot([VariantSpec.parse(n) for n in text.split(",")])]

    assert names("int8") == ["int8", "float32"]
    assert names("float16,int8_q") == ["float16", "int8_q", "float32"]
    assert names("int8,float32") == ["int8", "float32"]  # selected: kept where the user put it
    assert names("float32") == ["float32"]  # nothing to split
    assert pivot_name([VariantSpec.parse("float32")]) is None
    assert pivot_name(with_pivot([VariantSpec.parse("dynamic")])) == "float32"
    assert PIVOT_SPEC.name == "float32"


def _finished(role: str, agreement_pct: float) -> dict[str, object]:
    n, agree = 100, round(agreement_pct)
    metrics = Agreement(
        n=n,
        top1_agreement_pct=float(agree),
        top1_agreement_ci95=(0.0, 100.0),
        k=1,
        topk_agreement_pct=float(agree),
        disagreements=n - agree,
        max_abs_prob_delta=0.1,
        mean_abs_top1_prob_delta=0.01,
        mean_kl=0.001,
        nan_outputs=0,
        flip_matrix=((0,),),
        reference_accuracy_pct=90.0,
        tflite_accuracy_pct=90.0,
        accuracy_delta_pct=0.0,
        mcnemar_p=1.0,
        labelled_n=n,
    )
    return finished_variant(
        pending_variant(VariantSpec.parse("float32"), role=role),
        size_bytes=10,
        reference_size=40,
        agreement=metrics,
        reference={},  # unlabelled: agreement alone decides
        min_agreement_pct=95.0,
        conversion_seconds=1.0,
        conversion_cached=False,
        conversion_route="keras",
        select_tf_ops_used=(),
        softmax_applied=False,
        io={},
        warnings=[],
    )


def test_a_pivot_the_user_did_not_select_is_never_judged() -> None:
    pivot = _finished(ROLE_PIVOT, 50.0)  # far below the threshold, yet not a FAIL
    assert pivot["passed"] is None
    assert verdict(pivot) == "PIVOT"
    selected = _finished(ROLE_SELECTED, 99.0)
    assert selected["passed"] is True
    assert exit_status({"variants": [pivot, selected]}) == 0
    # The same float32 selected by the user is judged like any variant.
    assert exit_status({"variants": [_finished(ROLE_SELECTED, 50.0), selected]}) == 1


@pytest.mark.slow
def test_cli_run_of_int8_alone_writes_the_pivot_and_a_split_that_recomputes(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable, "-m", "core", "run", str(tiny_models["saved_model"]),
            "--data", str(tiny_data), "--modes", "int8", "--preprocess", "unit",
            # Two calibration images: a coarse int8 model that really flips some images.
            "--calibration-samples", "2", "--latency-runs", "3", "--threads", "1",
            "--out", str(out),
        ],
        cwd=REPO,
        env={**os.environ, "QUANTLENS_HOME": str(tmp_path / "home")},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["pivot"] == "float32"
    entries = {v["name"]: v for v in report["variants"]}
    assert list(entries) == ["int8", "float32"]  # the user's variants first
    pivot, int8 = entries["float32"], entries["int8"]
    assert pivot["role"] == "pivot" and pivot["status"] == "done"
    assert pivot["passed"] is None and pivot["disagreement_split"] is None
    assert int8["role"] == "selected" and int8["passed"] is not None
    assert (out / "float32.tflite").read_bytes()[4:8] == b"TFL3"
    table_row = next(ln for ln in done.stdout.splitlines() if ln.startswith("float32"))
    assert "(pivot)" in table_row and "PIVOT" in table_row

    # Independent recomputation: top-1 of each written probability array.
    ref = np.load(out / "reference.probs.npy").argmax(axis=1)
    f32 = np.load(out / "float32.probs.npy").argmax(axis=1)
    q = np.load(out / "int8.probs.npy").argmax(axis=1)
    conversion = int(np.sum((q != ref) & (f32 != ref)))
    quantization = int(np.sum((q != ref) & (f32 == ref)))
    assert int8["disagreements"] == int(np.sum(q != ref)) > 0
    assert int8["disagreement_split"] == {"conversion": conversion, "quantization": quantization}
    assert conversion + quantization == int8["disagreements"]

    with (out / "int8.samples.csv").open() as f:
        rows = list(csv.DictReader(f))
    expected = np.where(q == ref, "", np.where(f32 != ref, "conversion", "quantization"))
    assert [r["cause"] for r in rows] == list(expected)
    assert f"int8: {int8['disagreements']} disagreements: {conversion} conversion-caused" in (
        done.stdout
    )


def test_history_best_agreement_leaves_out_the_pivot(tmp_path: Path) -> None:
    from core.history.store import open_store

    pivot = _finished(ROLE_PIVOT, 100.0)
    int8 = {**_finished(ROLE_SELECTED, 91.0), "name": "int8", "mode": "int8"}
    with open_store(tmp_path) as store:
        store.create_run("r1", name="r1", run_dir=tmp_path / "r1", job={})
        store.sync_report("r1", {"run": {"id": "r1"}, "variants": [int8, pivot]})
        row = store.get_run("r1")
    assert row is not None
    assert row.best_agreement_pct == 91.0  # not the unjudged pivot's 100 %
    assert row.all_passed is False
