"""The three-way split on the pages: the Overview card line, the pivot shown but not judged,
the Agreement table and the gallery's cause badge, against a hand-built run whose split is
recomputed here from the arrays it wrote."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.inputs import rundir
from tests.app.conftest import OpenPage
from tests.app.fixtures import _register, build_run, read_report
from ui import keys


def _causes(run_dir: Path) -> np.ndarray:
    """Per sample: "conversion", "quantization" or "", from the top-1 of the written arrays."""
    ref = np.load(run_dir / "reference.probs.npy").argmax(1)
    f32 = np.load(run_dir / "float32.probs.npy").argmax(1)
    q = np.load(run_dir / "int8.probs.npy").argmax(1)
    return np.where(q == ref, "", np.where(f32 != ref, "conversion", "quantization"))


@pytest.fixture
def pivoted(home: Path) -> Path:
    """A run of int8 alone: float32 is the pivot QuantLens added; both flip 10 of 40."""
    run_dir = build_run(home, flips={"int8": 10, "float32": 10}, failed_variant=None)
    report = read_report(run_dir)
    causes = _causes(run_dir)
    samples = pd.read_csv(rundir.variant_samples_path(run_dir, rundir.FileId("int8")))
    samples["cause"] = causes
    samples.to_csv(rundir.variant_samples_path(run_dir, rundir.FileId("int8")), index=False)
    report["pivot"] = "float32"
    for v in report["variants"]:
        v["role"] = "pivot" if v["name"] == "float32" else "selected"
    pivot = report["variants"][1]
    pivot["passed"] = None
    report["variants"][0]["disagreement_split"] = {
        "conversion": int((causes == "conversion").sum()),
        "quantization": int((causes == "quantization").sum()),
    }
    rundir.write_json_atomic(run_dir / rundir.REPORT, report)
    _register(home, run_dir, report)
    return run_dir


def test_fixture_has_both_causes(pivoted: Path) -> None:
    split = read_report(pivoted)["variants"][0]["disagreement_split"]
    assert split["conversion"] > 0 and split["quantization"] > 0
    assert split["conversion"] + split["quantization"] == 10


def test_overview_shows_the_split_line_and_a_pivot_that_is_not_judged(
    pivoted: Path, open_page: OpenPage
) -> None:
    causes = _causes(pivoted)
    conversion, quantization = (causes == "conversion").sum(), (causes == "quantization").sum()
    at = open_page("overview")
    md = [m.value for m in at.markdown]
    # int8 agrees on 30 of 40 (75 %): FAIL; the pivot, at 75 % too, is not judged or counted.
    assert md[0].startswith("**0 of 1**")
    # The title is escaped markdown: "(pivot)" reads as written.
    assert "PIVOT" in md[md.index(r"#### float32 \(pivot\)") + 1]
    assert "FAIL" in md[md.index("#### int8") + 1]
    lines = [c.value for c in at.caption if "conversion-caused" in c.value]
    assert lines == [
        f"of which {conversion} conversion-caused (float32 TFLite already disagrees) · "
        f"{quantization} quantization-caused"
    ]
    table = at.dataframe[0].value
    assert list(table["model"]) == ["original", "int8", "float32"]
    assert list(table["verdict"]) == ["", "FAIL", "PIVOT"]


def test_agreement_page_tables_the_split(pivoted: Path, open_page: OpenPage) -> None:
    causes = _causes(pivoted)
    at = open_page("agreement")
    split = next(d.value for d in at.dataframe if "conversion-caused" in d.value.columns)
    assert split.to_dict("records") == [
        {
            "variant": "int8",
            "disagreements": 10,
            "conversion-caused": int((causes == "conversion").sum()),
            "quantization-caused": int((causes == "quantization").sum()),
        }
    ]


def test_each_gallery_tile_carries_its_cause_badge(pivoted: Path, open_page: OpenPage) -> None:
    causes = _causes(pivoted)
    at = open_page("disagreements", state={keys.DISAGREE_VARIANT: "int8"})
    rows = [
        int(str(b.key).rsplit(".", 1)[1])
        for b in at.button
        if str(b.key).startswith("disagreements.tile.")
    ]
    badges = [m.value for m in at.markdown if "-badge[" in m.value]
    assert len(rows) == len(badges) == 10
    for row, badge in zip(rows, badges, strict=True):
        assert f"[{causes[row]}]" in badge, (row, badge)


def test_the_pivot_gallery_has_no_cause_badges(pivoted: Path, open_page: OpenPage) -> None:
    at = open_page("disagreements", state={keys.DISAGREE_VARIANT: "float32"})
    assert not [m.value for m in at.markdown if "-badge[" in m.value]


def test_report_html_lists_the_pivot_unjudged_and_the_split(pivoted: Path) -> None:
    import re

    from core.reporting.html import render_report_html

    causes = _causes(pivoted)
    conversion, quantization = (causes == "conversion").sum(), (causes == "quantization").sum()
    page = render_report_html(pivoted)
    # Only int8 is judged: the pivot is not in the "do not meet" count.
    assert "1 of 1 variant(s) do not meet" in page
    pivot_row = re.search(r"<tr><td><strong>float32 \(pivot\)</strong>.*?</tr>", page)
    assert pivot_row and ">PIVOT</span>" in pivot_row.group(0)
    assert f"10<br><small>{conversion} conversion · {quantization} quantization</small>" in page
    tiles = re.findall(r'<div class="cause">(\w+)</div>', page)
    assert sorted(tiles) == sorted(c for c in causes if c)
