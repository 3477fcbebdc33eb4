"""The Compare page's "What changed" table: a headline, one row per property, differences marked."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from pandas.io.formats.style import Styler

from core.reporting.run_compare import ChangeRow
from ui import fmt

CHANGED = "≠"
CHANGED_BG = "background-color: #FFF1C2"
_ROW_PX = 35  # st.dataframe's row height


def headline(changes: Sequence[ChangeRow], *, data_unverified: bool) -> str:
    """One markdown sentence: what differs, or why equal-looking runs may still differ."""
    differing = [c.field for c in changes if c.differs]
    if differing:
        return "Differs: **" + fmt.text(", ".join(differing)) + "**"
    if data_unverified:
        return (
            "Same model, settings and library versions. The data's content hash is missing from "
            "an older run, so only the data path could be compared."
        )
    return "Same model, data, settings and library versions: only the numbers differ."


def changes_frame(changes: Sequence[ChangeRow], labels: Sequence[str]) -> pd.DataFrame:
    """One row per property: a ≠ mark, its group and name, then its value under each label."""
    return pd.DataFrame(
        [
            {
                "changed": CHANGED if c.differs else "",
                "group": c.group,
                "property": c.field,
                **dict(zip(labels, c.values, strict=True)),
            }
            for c in changes
        ],
        columns=["changed", "group", "property", *labels],
    )


def cell_styles(frame: pd.DataFrame, labels: Sequence[str]) -> pd.DataFrame:
    """Cell styles: differing rows' values highlighted, so the eye lands on what changed."""
    styles = pd.DataFrame("", index=frame.index, columns=frame.columns)
    differs = frame["changed"] == CHANGED
    styles.loc[differs, list(labels)] = CHANGED_BG
    styles.loc[differs, "property"] = "font-weight: bold"
    return styles


def styled(frame: pd.DataFrame, labels: Sequence[str]) -> Styler:
    """`changes_frame` with the differing rows marked."""
    return frame.style.apply(cell_styles, labels=labels, axis=None)


def table_height(frame: pd.DataFrame) -> int:
    """Pixels that show every row: nothing that changed scrolls out of sight."""
    return _ROW_PX * (len(frame) + 1) + 3
