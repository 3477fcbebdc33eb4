"""report.html: no PASS for a near-chance original, and a larger model marked as larger."""

from __future__ import annotations

import re
from pathlib import Path

from core.reporting.html import render_report_html
from tests.app.fixtures import build_run, read_report


def _verdict_row(html: str, name: str) -> str:
    match = re.search(rf"<tr><td><strong>{name}</strong></td>.*?</tr>", html, re.S)
    assert match, name
    return match.group(0)


def test_near_chance_run_has_no_pass_and_says_why(tmp_path: Path) -> None:
    run = build_run(tmp_path, near_chance=True, legacy_report=False)
    reference = read_report(run)["reference"]
    acc, baseline = reference["accuracy_pct"], reference["accuracy_baseline"]
    html = render_report_html(run)
    rate = 100 * baseline["majority_count"] / baseline["n"]
    named = f"majority class {baseline['majority_class']} at {rate:.1f} % of n=40"
    p = f"{baseline['p_value']:.2g}"
    # report.html says which baseline the verdict was tested against.
    assert f"<th>accuracy baseline</th><td>{named} (one-sided binomial p = {p})</td>" in html
    for name in ("float16", "int8"):
        row = _verdict_row(html, name)
        assert "NO VERDICT" in row and 'class="pass"' not in row
        reason = (
            f"the original is {acc:.1f} % accurate, not clearly above always answering the "
            f"{named} (one-sided binomial p = {p}): check the preprocessing preset or the labels"
        )
        assert f'<td>{name} NO VERDICT</td><td colspan="11" class="err">{reason}</td>' in html
    assert ">PASS<" not in html


def test_a_larger_model_shows_a_red_plus(tmp_path: Path) -> None:
    # The original is 2.4 MB: 2.52 MB is 5 % larger, 0.6 MB is 75 % smaller.
    run = build_run(tmp_path, sizes={"float16": 2_520_000, "int8": 600_000})
    html = render_report_html(run)
    assert '<span class="fail">+5.0 %</span>' in _verdict_row(html, "float16")
    int8 = _verdict_row(html, "int8")
    assert "\u221275.0 %" in int8 and "+75.0" not in int8
