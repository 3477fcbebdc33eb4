"""Overview says where the calibration images came from; Agreement charts the calibration sweep
with its statement. A hand-built run with hand-written `calibration` and `sweep` sections."""

from __future__ import annotations

import json
from pathlib import Path

from tests.app.conftest import OpenPage
from tests.app.fixtures import build_run

# Two seeds at each of two sizes: means 90 % and 97.5 %, KL means 0.2 and 0.05.
POINTS = [
    {"size": 10, "seed": 1, "agreement_pct": 88.0, "mean_kl": 0.3, "n": 40},
    {"size": 10, "seed": 2, "agreement_pct": 92.0, "mean_kl": 0.1, "n": 40},
    {"size": 50, "seed": 1, "agreement_pct": 97.5, "mean_kl": 0.04, "n": 40},
    {"size": 50, "seed": 2, "agreement_pct": 97.5, "mean_kl": 0.06, "n": 40},
]
STATEMENT = "int8: agreement is still changing at the largest size tried (n=50, 97.50 %)"


def _with_sections(run_dir: Path) -> None:
    path = run_dir / "report.json"
    report = json.loads(path.read_text())
    report["calibration"] = {
        "source": "held-out",
        "reason": "100 images held out of evaluation",
        "requested": 100,
        "images": 100,
        "held_out": 100,
        "evaluable": 40,
        "path": None,
        "file": "calibration.csv",
    }
    report["sweep"] = {
        "backend": "quantizer",
        "seeds": 2,
        "pool_images": 100,
        "pool_source": "held-out",
        "evaluated_n": 40,
        "flat_within_pp": 0.5,
        "modes": {"int8": {"points": POINTS}, "int16x8": {"points": []}},
        "statement": STATEMENT,
    }
    path.write_text(json.dumps(report))


def test_overview_says_the_calibration_images_were_held_out(
    home: Path, open_page: OpenPage
) -> None:
    _with_sections(build_run(home, flips={"float16": 0, "int8": 6}))
    at = open_page("overview")
    captions = [c.value for c in at.caption]
    assert (
        "Calibration: 100 images held out of evaluation (seeded draw from a pool of 100); the "
        "evaluated images come from the other 40." in captions
    )


def test_agreement_charts_the_sweep_mean_and_spread_with_its_statement(
    home: Path, open_page: OpenPage
) -> None:
    _with_sections(build_run(home, flips={"float16": 0, "int8": 6}))
    at = open_page("agreement")
    assert "Calibration sweep" in [h.value for h in at.subheader]
    assert STATEMENT in [m.value for m in at.markdown]
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    sweep = next(s for s in specs if "Calibration sweep" in str(s["layout"].get("title")))
    agreement, kl = sweep["data"]  # int8 only: int16x8 has no point
    assert agreement["x"] == [10, 50] and agreement["y"] == [90.0, 97.5]
    assert agreement["error_y"]["array"] == [2.0, 0.0]
    assert agreement["error_y"]["arrayminus"] == [2.0, 0.0]
    assert kl["y"] == [0.2, 0.05]
    assert sweep["layout"]["xaxis"]["type"] == "log"


def test_runs_without_the_sections_show_neither(home: Path, open_page: OpenPage) -> None:
    build_run(home, flips={"float16": 0, "int8": 6})
    assert not any(c.value.startswith("Calibration:") for c in open_page("overview").caption)
    assert "Calibration sweep" not in [h.value for h in open_page("agreement").subheader]


def test_report_html_carries_the_calibration_line_the_sweep_statement_and_chart(
    home: Path,
) -> None:
    from core.reporting.html import render_report_html

    run_dir = build_run(home, flips={"float16": 0, "int8": 6})
    _with_sections(run_dir)
    page = render_report_html(run_dir)
    assert f'<p id="sweep">{STATEMENT}</p>' in page
    assert (
        "<th>calibration images</th><td>100 images held out of evaluation (seeded draw from a "
        "pool of 100); the evaluated images come from the other 40</td>" in page
    )
    assert "Calibration sweep (bars: min" in page and "calibration images (log scale)" in page
