"""report.html carries the pick with its rule in words, the verdict rule, the too-few-images
note, and the trade-off chart with its frontier (issue 13 items 1-3)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from core.reporting.html import render_report_html
from tests.app.fixtures import build_run

Z = 1.959963984540054


def _tradeoff_spec(html: str) -> dict:  # type: ignore[type-arg]
    for match in re.finditer(
        r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*(\{.*?\}),\s*\{', html, re.S
    ):
        data, layout = json.loads(match.group(1)), json.loads(match.group(2))
        if "Trade-off" in layout["title"]["text"]:
            return {"data": data, "layout": layout}
    raise AssertionError("no trade-off chart in report.html")


def test_the_pick_its_rule_and_the_chart_are_in_the_report(tmp_path: Path) -> None:
    # 200 images: float16 agrees on all, int8 flips one; both lower bounds clear 95 % and
    # int8 (0.65 MB) is smaller than float16 (1.2 MB).
    run = build_run(tmp_path, n=200, flips={"float16": 0, "int8": 1})
    html = render_report_html(run)
    assert "Recommended: <strong>int8</strong> · runner-up float16" in html
    assert (
        "Rule: for CPU (LiteRT with XNNPACK): among variants it can run whose top-1 agreement "
        "is at least 95 % (the run&#x27;s verdict), the smallest that is not slower than "
        "float32 TFLite on the same runtime, then the fastest (p50)" in html
    )
    assert (
        "Verdict: PASS when top-1 agreement (the point estimate) is at least 95 %; images "
        "preprocessed with preset unit." in html
    )
    assert "Too few images" not in html  # 200 >= 73
    chart = _tradeoff_spec(html)
    assert chart["data"][0]["text"] == ["float16", "int8"]
    assert chart["layout"]["xaxis"]["title"]["text"] == "size (MB)"
    assert chart["layout"]["yaxis"]["title"]["text"] == "p50 latency (ms)"
    assert "Pareto frontier" in html


def test_nothing_qualifies_on_40_images_and_the_report_says_why(tmp_path: Path) -> None:
    run = build_run(tmp_path, flips={"float16": 0, "int8": 6})
    path = run / "report.json"
    report = json.loads(path.read_text())
    report["options"]["verdict"] = "lower-bound"
    path.write_text(json.dumps(report))
    html = render_report_html(run)
    bound = 100 * 40 / (40 + Z * Z)  # 91.2 %: float16's 40 of 40
    assert "No variant qualifies for a recommendation." in html
    assert f"closest: float16 at {bound:.1f} % (n=40)" in html
    assert "Verdict: PASS when the lower 95 % Wilson bound" in html
    assert (
        "<strong>Too few images:</strong> 40 images are too few for the lower 95 % bound to "
        "reach 95 % even at 100 % agreement; at least 73 are needed." in html
    )
