"""Compare's picks, kept past a page switch (Streamlit drops an undrawn widget's state) and a
reload (a new session), the way Setup keeps its form in the workspace."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import streamlit as st

from core.inputs.rundir import workspace_home, write_json_atomic
from ui import keys

PICKS_FILE = "compare-picks.json"


def _path() -> Path:
    return workspace_home() / PICKS_FILE


def _saved() -> list[str] | None:
    try:
        saved = json.loads(_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(saved, list) and all(isinstance(s, str) for s in saved):
        return saved
    return None


def remembered() -> list[str] | None:
    """The picks to open with: the widget's own, else this session's, else the workspace's."""
    for picks in (
        st.session_state.get(keys.COMPARE_ITEMS),
        st.session_state.get(keys.COMPARE_PICKS),
    ):
        if picks is not None:
            return list(picks)
    return _saved()


def remember(picks: list[str]) -> None:
    """Keep `picks` in the session and, when they changed, in the workspace (best effort)."""
    st.session_state[keys.COMPARE_PICKS] = list(picks)
    if picks == _saved():
        return
    # A read-only workspace only costs the memory across reloads.
    with contextlib.suppress(OSError):
        write_json_atomic(_path(), list(picks))
