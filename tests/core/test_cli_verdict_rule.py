"""The real CLI with `--verdict point|lower-bound` on 20 images of a model whose variants agree
100 %: point exits 0, lower-bound exits 1 and says why, and report.json carries the rule, the
needed n and the recommendation (issue 13 items 2 and 3)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.core.test_cli import run_cli
from tests.core.test_cli_verdict import build_colour_model

pytestmark = pytest.mark.slow

Z = 1.959963984540054


def _lower_bound_at_100_pct(n: int) -> float:
    """Wilson lower bound in % when all n agree: n / (n + z²), worked out by hand."""
    return 100.0 * n / (n + Z * Z)


@pytest.fixture(scope="module")
def runs(
    tiny_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]]:
    root = tmp_path_factory.mktemp("verdict_rule")
    model = build_colour_model(root / "colour.keras")
    home = root / "home"
    out: dict[str, tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]] = {}
    for name, rule, threshold in (
        ("point", "point", "95"),
        ("lower", "lower-bound", "95"),
        ("lower80", "lower-bound", "80"),
    ):
        folder = root / name
        done = run_cli(
            "run",
            str(model),
            "--data",
            str(tiny_data),
            "--modes",
            "float32,float16",
            "--preprocess",
            "unit",
            "--samples",
            "20",
            "--min-agreement",
            threshold,
            "--verdict",
            rule,
            "--latency-runs",
            "3",
            "--threads",
            "1",
            "--out",
            str(folder),
            home=home,
        )
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        out[name] = (done, report, folder)
    return out


def test_point_passes_and_lower_bound_fails_on_20_images(runs) -> None:  # type: ignore[no-untyped-def]
    point, point_report, _ = runs["point"]
    lower, lower_report, _ = runs["lower"]
    for report in (point_report, lower_report):
        assert [v["top1_agreement_pct"] for v in report["variants"]] == [100.0, 100.0]
        assert [v["n"] for v in report["variants"]] == [20, 20]
    assert point.returncode == 0, point.stdout + point.stderr[-2000:]
    assert lower.returncode == 1, lower.stdout + lower.stderr[-2000:]
    bound = _lower_bound_at_100_pct(20)  # 83.9 %
    for name in ("float32", "float16"):
        assert f"{name}: FAIL — lower 95 % bound {bound:.1f} % is below 95 %" in lower.stdout
    needed = next(n for n in range(1, 10_000) if _lower_bound_at_100_pct(n) >= 95.0)
    assert needed == 73
    for done in (point, lower):
        assert "note: 20 images are too few" in done.stdout
        assert f"at least {needed} are needed" in done.stdout
    assert "verdict: PASS when the lower 95 % Wilson bound" in lower.stdout
    assert "verdict: PASS when top-1 agreement (the point estimate)" in point.stdout
    assert [v["n_needed"] for v in lower_report["variants"]] == [needed, needed]


def test_the_rule_is_recorded_in_options_and_the_reproduce_command(runs) -> None:  # type: ignore[no-untyped-def]
    _, point_report, _ = runs["point"]
    _, lower_report, _ = runs["lower"]
    assert point_report["options"]["verdict"] == "point"
    assert lower_report["options"]["verdict"] == "lower-bound"
    assert "--verdict" not in point_report["run"]["command"]  # the default stays implicit
    assert "--verdict lower-bound" in lower_report["run"]["command"]


def test_recommendation_names_none_and_the_closest_when_nothing_clears_95(runs) -> None:  # type: ignore[no-untyped-def]
    done, report, _ = runs["lower"]
    rec = report["recommendation"]
    assert rec["variant"] is None
    assert rec["runner_up"] is None
    # Both bounds are equal (20 of 20): the smaller file is the closest.
    sizes = {v["name"]: v["size_bytes"] for v in report["variants"]}
    assert rec["closest"] == min(sizes, key=lambda n: sizes[n])
    assert "recommended: none" in done.stdout


def test_recommendation_picks_the_smaller_file_when_both_clear_80(runs) -> None:  # type: ignore[no-untyped-def]
    done, report, folder = runs["lower80"]
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    # 20 of 20 gives a lower bound of 83.9 % >= 80 %: both qualify, so the smaller file wins
    # (on a model this tiny float16's dequantize ops make it the larger one). Sizes come
    # straight from the files on disk, not from report.json.
    on_disk = {name: (folder / f"{name}.tflite").stat().st_size for name in ("float32", "float16")}
    assert on_disk["float16"] != on_disk["float32"]
    smaller, larger = sorted(on_disk, key=lambda name: on_disk[name])
    rec = report["recommendation"]
    assert rec["variant"] == smaller
    assert rec["runner_up"] == larger
    assert "lower 95 % Wilson bound of top-1 agreement is at least 80 %" in rec["rule"]
    assert f"recommended: {smaller} (runner-up: {larger})" in done.stdout
    for variant in report["variants"]:
        assert math.isclose(variant["top1_agreement_ci95"][0], _lower_bound_at_100_pct(20))
