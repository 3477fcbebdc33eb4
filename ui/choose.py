"""The decision widgets: the trade-off chart with its Pareto frontier, and the recommended pick."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import streamlit as st

from core.reporting.figures import tradeoff_figure
from core.reporting.recommend import FRONTIER_RULE, pareto_frontier, recommendation, tradeoff_points
from core.reporting.runmodel import RunReport
from core.reporting.sections.variant import Variant
from ui import fmt


def report_recommendation(report: RunReport) -> dict[str, Any]:
    """The pick stored in report.json; runs older than the pick get it computed the same way."""
    stored = report.recommendation
    return dict(stored) if stored else recommendation(report)


def recommendation_box(report: RunReport, rec: Mapping[str, Any] | None = None) -> None:
    """The pick (or "none" and the closest variant) with its rule in words and the reason;
    `rec` is one target's recommendation (default: the run's own)."""
    rec = dict(rec) if rec is not None else report_recommendation(report)
    if rec.get("variant"):
        runner = f" · runner-up **{fmt.text(rec['runner_up'])}**" if rec.get("runner_up") else ""
        st.success(f"**Recommended: {fmt.text(rec['variant'])}**{runner}", icon=":material/star:")
        if rec.get("slower_than_float32"):
            st.warning(fmt.text(rec["slower_than_float32"]), icon=":material/slow_motion_video:")
    else:
        st.warning("**No variant qualifies for a recommendation.**", icon=":material/help:")
    st.caption(f"Rule: {fmt.text(rec['rule'])}. {fmt.text(rec['reason'])}.")


def tradeoff_chart(
    variants: Sequence[Variant | Mapping[str, Any]],
    *,
    key: str,
    pick: str | None = None,
    target: str | None = None,
    arena_limit_kb: float | None = None,
) -> None:
    """Every finished variant at (size, p50) coloured by agreement, with the frontier drawn;
    with a target, the points it cannot run are crossed out and off the frontier."""
    points = tradeoff_points(variants, target=target, arena_limit_kb=arena_limit_kb)
    if not points:
        st.info("No variant has both a size and a measured latency yet.")
        return
    st.plotly_chart(tradeoff_figure(points, frontier=pareto_frontier(points), pick=pick), key=key)
    missing = sum(1 for v in variants if v.get("status") == "done") - len(points)
    left_out = f" {missing} finished variant(s) without a latency are not drawn." if missing else ""
    st.caption(
        f"Dashed line: the Pareto frontier — {FRONTIER_RULE}. Colour: top-1 agreement with the "
        f"original (%). Sizes in MB (10⁶ bytes); p50 latency per invoke at batch 1.{left_out}"
    )
