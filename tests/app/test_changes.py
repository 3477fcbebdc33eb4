"""The Compare page's "What changed" table, built from hand-made change rows."""

from __future__ import annotations

from core.reporting.run_compare import ChangeRow
from ui import changes

ROWS = [
    ChangeRow(group="model", field="model sha256", values=("ab12", "ab12"), differs=False),
    ChangeRow(group="variant", field="mode", values=("int8", "float16"), differs=True),
]
LABELS = ["A · int8", "B · float16"]


def test_the_frame_has_one_row_per_property_and_a_column_per_item() -> None:
    frame = changes.changes_frame(ROWS, LABELS)
    assert list(frame.columns) == ["changed", "group", "property", "A · int8", "B · float16"]
    assert frame.to_dict("records") == [
        {
            "changed": "",
            "group": "model",
            "property": "model sha256",
            "A · int8": "ab12",
            "B · float16": "ab12",
        },
        {
            "changed": "≠",
            "group": "variant",
            "property": "mode",
            "A · int8": "int8",
            "B · float16": "float16",
        },
    ]
    assert list(changes.changes_frame([], LABELS).columns) == list(frame.columns)  # no rows


def test_only_differing_rows_are_highlighted() -> None:
    frame = changes.changes_frame(ROWS, LABELS)
    styles = changes.cell_styles(frame, LABELS)
    assert styles.loc[0].tolist() == ["", "", "", "", ""]  # equal values: nothing marked
    bg = "background-color: #FFF1C2"
    assert styles.loc[1].tolist() == ["", "", "font-weight: bold", bg, bg]
    assert bg in changes.styled(frame, LABELS).to_html()


def test_the_table_is_tall_enough_for_every_row() -> None:
    frame = changes.changes_frame(ROWS, LABELS)
    assert changes.table_height(frame) == 35 * 3 + 3


def test_headline_names_what_differs_or_why_it_may() -> None:
    assert changes.headline(ROWS, data_unverified=False) == "Differs: **mode**"
    same = [ROWS[0]]
    assert changes.headline(same, data_unverified=False) == (
        "Same model, data, settings and library versions: only the numbers differ."
    )
    assert "content hash is missing" in changes.headline(same, data_unverified=True)
    markup = [ChangeRow(group="data", field="*path*", values=("a", "b"), differs=True)]
    assert "\\*path\\*" in changes.headline(markup, data_unverified=False)  # escaped, not bold
