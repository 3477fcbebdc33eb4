"""What a user reads in empty places: table cells with no number, a gallery a filter emptied."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.app.conftest import OpenPage
from tests.app.fixtures import CLASSES, read_report
from ui import keys


def test_summary_table_draws_a_dash_in_empty_cells(crafted: Path, open_page: OpenPage) -> None:
    rep = read_report(crafted)
    at = open_page("overview")
    table = at.dataframe[0]  # the summary: the first table on Overview
    # The grid draws `placeholder` for every missing cell; unset, it draws a grey "None".
    # (Checked in a real browser: the cells read "—".)
    assert table.proto.placeholder == "—"
    data = table.value.set_index("model")
    # the original has no agreement or reduction of its own; the crashed variant has no size
    assert pd.isna(data.loc["original", "top-1 agreement (%)"])
    assert pd.isna(data.loc["original", "size change vs original (%)"])
    assert pd.isna(data.loc["int16x8", "size (MB)"])
    int8 = next(v for v in rep["variants"] if v["name"] == "int8")
    assert data.loc["int8", "top-1 agreement (%)"] == int8["top1_agreement_pct"]
    # numbers stay numbers, so a click on a header sorts by value
    assert data["top-1 agreement (%)"].dtype.kind == "f"
    formats = json.loads(table.proto.columns)
    assert formats["disagreements"]["type_config"]["format"] == "%d"  # 6, not 6.0


def _samples(run: Path, variant: str) -> pd.DataFrame:
    return pd.read_csv(run / "samples.csv").merge(
        pd.read_csv(run / f"{variant}.samples.csv"), on="index"
    )


@pytest.mark.parametrize(
    # Layers' table has its own test (test_layers_page); this run has no diagnosis to show, and
    # no deployability pre-flight for Targets' tables.
    "page",
    ["overview", "size", "agreement", "deltas", "latency", "history"],
)
def test_every_table_on_a_page_draws_a_dash_in_empty_cells(
    page: str, crafted: Path, open_page: OpenPage
) -> None:
    """The crafted run has a crashed variant (no size, no agreement, no latency): wherever such
    a cell is drawn it reads "—", on every table of every page, not the grid's grey "None"."""
    at = open_page(page)
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.dataframe) > 0
    assert [t.proto.placeholder for t in at.dataframe] == ["—"] * len(at.dataframe)


def test_an_empty_gallery_names_the_class_filter_that_emptied_it(
    crafted: Path, open_page: OpenPage
) -> None:
    s = _samples(crafted, "int8")
    flipped_classes = set(s.loc[~s["agree"], "ref_top1"])
    quiet = next(c for c in range(len(CLASSES)) if c not in flipped_classes)
    at = open_page(
        "disagreements", state={keys.DISAGREE_VARIANT: "int8", keys.DISAGREE_CLASS: quiet}
    )
    messages = [i.value for i in at.info]
    assert len(messages) == 1, messages
    assert "class filter" in messages[0] and CLASSES[quiet] in messages[0]
    assert f"{int((~s['agree']).sum())} in other classes" in messages[0]
    assert "margin" not in messages[0]


def test_an_empty_at_risk_list_blames_the_class_not_the_margin(
    crafted: Path, open_page: OpenPage
) -> None:
    s = _samples(crafted, "int8")

    def at_risk_below(margin: float) -> pd.DataFrame:
        return s[s["agree"] & (s["ref_margin"] < margin)]

    # a margin under which some, but not all, classes have an at-risk sample
    margin = next(
        m / 100
        for m in range(1, 100)
        if 0 < at_risk_below(m / 100)["ref_top1"].nunique() < len(CLASSES)
    )
    at_risk = at_risk_below(margin)
    quiet = next(c for c in range(len(CLASSES)) if c not in set(at_risk["ref_top1"]))
    at = open_page(
        "disagreements",
        state={
            keys.DISAGREE_VARIANT: "int8",
            keys.DISAGREE_CLASS: quiet,
            keys.DISAGREE_AT_RISK: True,
            keys.DISAGREE_MARGIN: margin,
        },
    )
    assert not [m.value for m in at.success if "margin" in m.value]
    messages = [i.value for i in at.info]
    assert len(messages) == 1 and "class filter" in messages[0], messages
    assert f"({len(at_risk)} in other classes)" in messages[0]
