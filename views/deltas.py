"""Probability deltas: per-variant histograms; a selected bar shows its samples below."""

import streamlit as st

from core.metrics.agreement import delta_stats
from core.reporting.figures import (
    DELTA_AXES,
    DELTA_METRICS,
    delta_bar_mask,
    delta_histogram_figure,
)
from core.types import short_name
from ui import keys, widgets

BINS = 30
STRIP = 12

st.title("Probability deltas")
res = widgets.require_results()
widgets.run_header(res)

names = widgets.finished_variants_or_stop(res)
c1, c2 = st.columns([1, 2])
metric = c1.radio(
    "Metric", list(DELTA_METRICS), key=keys.DELTAS_METRIC, format_func=DELTA_METRICS.__getitem__
)
shown = c2.multiselect(
    "Variants", names, default=names, key=keys.DELTAS_VARIANTS, format_func=short_name
)
if not shown:
    st.info("Pick at least one variant.")
    st.stop()

tables = {n: res.variant_summary(n) for n in shown}  # no text columns; the strip reads its rows
values = {n: t[metric].to_numpy(dtype=float) for n, t in tables.items()}
st.caption("Per sample, in probability units (0..1). Click a bar to see its samples.")
event = st.plotly_chart(
    delta_histogram_figure(values, metric=str(metric), bins=BINS),
    key=keys.DELTAS_CHART,
    on_select="rerun",
    selection_mode="points",
)
widgets.table(
    [{"variant": short_name(n), **delta_stats(v)} for n, v in values.items()],
    key="deltas.stats",
    column_config={
        c: st.column_config.NumberColumn(format="%.5f") for c in ("mean", "p99", "max |value|")
    },
)

points = widgets.selected_points(event)
if points:
    point = points[0]
    variant = shown[int(point.get("curve_number", 0))]
    lo, hi = (float(x) for x in point["customdata"])
    t = tables[variant]
    picked = t[delta_bar_mask(t[metric].to_numpy(dtype=float), lo, hi, deltas=values)]
    picked = picked.sort_values("abs_top1_prob_delta", ascending=False)
    st.subheader(f"{variant}: {DELTA_AXES[metric]} in [{lo:.4f}, {hi:.4f}] — {len(picked)} samples")
    widgets.gallery(res, variant, picked, key="deltas", page_size=STRIP, columns=6)
