"""Result pages against a run the real engine produced on the demo (slow: builds the demo)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.app.conftest import OpenPage
from tests.app.expected import pct2
from ui import keys

pytestmark = pytest.mark.slow


def _report(home: Path) -> dict:
    run = next((home / "runs").iterdir())
    return json.loads((run / "report.json").read_text())


def test_overview_shows_real_verdicts(real_home: Path, open_page: OpenPage) -> None:
    rep = _report(real_home)
    at = open_page("overview")
    md = [m.value for m in at.markdown]
    for v in rep["variants"]:
        assert v["status"] == "done"
        if v.get("role") == "pivot":  # float32, added for the split: shown, never judged
            idx = md.index(f"#### {v['name']} \\(pivot\\)")
            assert v["passed"] is None and "PIVOT" in md[idx + 1]
            continue
        idx = md.index(f"#### {v['name']}")
        assert ("PASS" if v["passed"] else "FAIL") in md[idx + 1]
    got = [m.value for m in at.metric if m.label == "Top-1 agreement"]
    assert got == [pct2(v["top1_agreement_pct"]) for v in rep["variants"]]
    got_n = [c.value for c in at.caption if c.value.startswith("95 % CI")]
    assert [f"n = {v['n']}" in c for c, v in zip(got_n, rep["variants"], strict=True)] == [
        True
    ] * len(rep["variants"])


def test_gallery_tiles_match_real_disagreements(real_home: Path, open_page: OpenPage) -> None:
    rep = _report(real_home)
    worst = max(rep["variants"], key=lambda v: v["disagreements"])
    at = open_page("disagreements")  # opens on the variant with the most flips
    assert at.selectbox(key=keys.DISAGREE_VARIANT).value == worst["name"]
    tiles = [b for b in at.button if str(b.key).startswith("disagreements.tile.")]
    if worst["disagreements"] == 0:
        assert at.success[0].value.startswith("No disagreements")
    else:
        assert len(tiles) == min(24, worst["disagreements"])
        assert len(at.get("image")) == len(tiles)


def test_latency_page_on_real_run(real_home: Path, open_page: OpenPage) -> None:
    rep = _report(real_home)
    at = open_page("latency")
    rows = at.dataframe[0].value
    assert list(rows["model"]) == ["original", *[v["name"] for v in rep["variants"]]]
    assert rows["n"].tolist()[0] == rep["reference"]["latency_ms"]["n"]
    assert f"TensorFlow {rep['environment']['tensorflow']}" in at.main.caption[-1].value


@pytest.mark.parametrize("page", ["size", "agreement", "deltas"])
def test_other_pages_render_on_real_run(real_home: Path, open_page: OpenPage, page: str) -> None:
    at = open_page(page)
    assert not at.error
    assert at.get("plotly_chart")
