"""Issue 13 items 1-3 on the pages: Overview's trade-off chart and pick (with its rule in words),
the verdict card's too-few-images note, Compare's chart across runs, and Setup's verdict choice
recorded in job.json and report.json on a real run."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest

from core.jobs import launch as jobs
from tests.app.conftest import OpenPage
from tests.app.fixtures import build_run
from ui import keys

Z = 1.959963984540054


def _captions(at) -> list[str]:  # type: ignore[no-untyped-def]
    """Captions as the reader sees them: markdown escapes removed."""
    return [re.sub(r"\\(.)", r"\1", c.value) for c in at.caption]


def _charts(at) -> list[dict]:  # type: ignore[no-untyped-def]
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _tradeoff(at) -> dict:  # type: ignore[no-untyped-def]
    return next(c for c in _charts(at) if "Trade-off" in c["layout"]["title"]["text"])


def test_overview_names_the_pick_its_rule_and_draws_the_frontier(
    home: Path, open_page: OpenPage
) -> None:
    # 200 images: float16 agrees on all (lower bound 200/(200+z²) = 98.1 %), int8 flips one
    # (lower bound about 97.2 %); both clear 95 %, and int8 (0.65 MB) is smaller than float16
    # (1.2 MB), so int8 is the pick and float16 the runner-up.
    build_run(home, n=200, flips={"float16": 0, "int8": 1})
    at = open_page("overview")
    assert [s.value for s in at.success] == ["**Recommended: int8** · runner-up **float16**"]
    captions = _captions(at)
    assert any(
        "Rule: for CPU (LiteRT with XNNPACK): among variants it can run whose top-1 agreement "
        "is at least 95 % (the run's verdict), the smallest that is not slower than float32 "
        "TFLite on the same runtime, then the fastest (p50)" in c
        for c in captions
    ), captions
    chart = _tradeoff(at)
    points = chart["data"][0]
    assert points["text"] == ["float16", "int8"]
    assert points["x"] == pytest.approx([1.2, 0.65])
    assert chart["layout"]["xaxis"]["title"]["text"] == "size (MB)"
    assert chart["layout"]["yaxis"]["title"]["text"] == "p50 latency (ms)"
    assert any(t.get("name") == "recommended: int8" for t in chart["data"])
    assert any("Pareto frontier" in c for c in captions)


def test_overview_says_none_qualifies_and_names_the_closest(
    crafted: Path, open_page: OpenPage
) -> None:
    # 40 images: float16 agrees on all, lower bound 40/(40+z²) = 91.2 % < 95 %; int8 flips 6.
    # Judged by the lower bound, nothing passes.
    path = crafted / "report.json"
    report = json.loads(path.read_text())
    report["options"]["verdict"] = "lower-bound"
    report.pop("recommendation", None)
    path.write_text(json.dumps(report))
    at = open_page("overview")
    assert [w.value for w in at.warning] == ["**No variant qualifies for a recommendation.**"]
    bound = 100 * 40 / (40 + Z * Z)
    captions = _captions(at)
    assert any(f"closest: float16 at {bound:.1f} %" in c for c in captions), captions


def test_the_card_says_how_many_images_a_lower_bound_needs(
    crafted: Path, open_page: OpenPage
) -> None:
    needed = next(n for n in range(1, 1000) if 100 * n / (n + Z * Z) >= 95.0)
    at = open_page("overview")
    notes = [c for c in _captions(at) if c.startswith("Too few images")]
    assert len(notes) == 2  # float16 and int8; the crashed variant has no n
    assert f"at least {needed} are needed" in notes[0]
    assert "40 images are too few" in notes[0]


def test_a_lower_bound_run_shows_its_rule_and_why_a_card_fails(
    home: Path, open_page: OpenPage
) -> None:
    run = build_run(home, flips={"float16": 0, "int8": 6})
    report_path = run / "report.json"
    report = json.loads(report_path.read_text())
    report["options"]["verdict"] = "lower-bound"
    for v in report["variants"]:
        if v["status"] == "done":
            v["passed"] = v["top1_agreement_ci95"][0] >= 95.0
    report_path.write_text(json.dumps(report))
    at = open_page("overview")
    captions = _captions(at)
    assert any(
        "Verdict: PASS when the lower 95 % Wilson bound of top-1 agreement is at least 95 %" in c
        for c in captions
    ), captions
    bound = 100 * 40 / (40 + Z * Z)
    assert any(c.startswith(f"FAIL: lower 95 % bound {bound:.1f} %") for c in captions), captions
    assert math.isclose(report["variants"][0]["top1_agreement_ci95"][0], bound, rel_tol=1e-9)


@pytest.mark.slow
def test_setup_verdict_choice_reaches_the_job_and_the_report(
    fresh_demo_home: Path, open_page: OpenPage
) -> None:
    at = open_page("setup", timeout=180)
    assert at.radio(key=keys.SETUP_VERDICT).value == "point"
    at.multiselect(key=keys.SETUP_MODES).set_value(["float32", "float16"]).run()
    at.radio(key=keys.SETUP_VERDICT).set_value("lower-bound").run()
    at.button(key=keys.SETUP_RUN).click().run(timeout=60)
    rid = at.session_state[keys.SELECTED_RUN]
    run_dir = fresh_demo_home / "runs" / rid
    assert json.loads((run_dir / "job.json").read_text())["verdict"] == "lower-bound"
    deadline = time.time() + 400
    while jobs.active_run_id() is not None and time.time() < deadline:
        time.sleep(2)
    assert jobs.read_status(run_dir)["status"] == "done"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["options"]["verdict"] == "lower-bound"
    assert "--verdict lower-bound" in report["run"]["command"]
    assert set(report["recommendation"]) >= {"variant", "rule", "runner_up", "reason"}
    overview = open_page("overview", state={keys.SELECTED_RUN: rid})
    points = _tradeoff(overview)["data"][0]
    assert sorted(points["text"]) == ["float16", "float32"]
