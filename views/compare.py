"""Compare: two or more runs or variants side by side, and what changed between them."""

import pandas as pd
import streamlit as st

from core.errors import QuantLensError
from core.reporting.figures import agreement_figure, latency_percentiles_figure, size_figure
from core.reporting.run_compare import (
    compared_items,
    data_unverified,
    latency_percentiles,
    sizes_bytes,
    summary_rows,
    threshold_pct,
    unique_labels,
    what_changed,
)
from ui import changes, choose, compare_picks, fmt, history, keys, widgets

_DEFAULT_RUNS = 2

st.title("Compare runs")
try:
    rows = history.list_runs()
except QuantLensError as exc:
    st.error(str(exc))
    st.stop()
if not rows:
    st.info("No runs stored yet. Run a model on **Setup** first.", icon=":material/info:")
    st.stop()

by_id = {r.id: r for r in rows}
triples = [(r.id, r.name, mode) for r in rows for mode in r.modes]
options = [f"{rid}/{mode}" for rid, _, mode in triples]
labels = dict(zip(options, unique_labels(triples), strict=True))

# A selection carried over from History may name runs deleted since; a multiselect refuses
# values outside its options, so drop them before the widget is drawn.
chosen = compare_picks.remembered()
if chosen is None:
    newest = [r for r in rows if r.best_agreement_pct is not None][:_DEFAULT_RUNS]
    chosen = [f"{r.id}/{m}" for r in newest for m in r.modes][:6]
st.session_state[keys.COMPARE_ITEMS] = [c for c in chosen if c in labels]

picked = st.multiselect(
    "Runs and variants",
    options,
    key=keys.COMPARE_ITEMS,
    format_func=lambda o: labels.get(o, o),
    placeholder="Pick two or more (run name · variant)",
    help="Each entry is one variant of one stored run; mix runs and variants freely.",
)
compare_picks.remember(picked)

selections = []
for option in picked:
    rid, _, variant = option.partition("/")
    row = by_id.get(rid)
    if row is None:
        continue
    report = history.report(row)
    if report is None:
        st.caption(f"{fmt.text(labels[option])}: no report yet, left out.")
        continue
    if report.variant(variant) is None:
        st.caption(f"{fmt.text(labels[option])}: not in the run's report yet, left out.")
        continue
    selections.append((rid, row.name, variant, report))

if len(selections) < 2:
    st.info(
        "Pick at least two variants above — from one run or from several. Tip: on **History**, "
        "select runs and press **Compare their variants**.",
        icon=":material/compare_arrows:",
    )
    st.stop()

try:
    items = compared_items(selections)
except QuantLensError as exc:
    st.error(str(exc))
    st.stop()

# ---- what changed ------------------------------------------------------------------------------------
st.subheader("What changed")
only_changed = st.toggle("Only rows that differ", key=keys.COMPARE_ONLY_CHANGED, value=False)
st.markdown(changes.headline(what_changed(items), data_unverified=data_unverified(items)))
item_labels = [i.label for i in items]
changes_df = changes.changes_frame(what_changed(items, only_changed=only_changed), item_labels)
widgets.table(
    changes.styled(changes_df, item_labels),
    key="compare.changes",
    height=changes.table_height(changes_df),
    column_config={"changed": st.column_config.TextColumn(width="small")},
)

# ---- summary ----------------------------------------------------------------------------------------
st.subheader("Summary")
summary = pd.DataFrame(summary_rows(items))
summary.insert(
    summary.columns.get_loc("n"),
    "95 % CI",
    [
        fmt.ci([lo, hi])
        for lo, hi in zip(summary["CI low (%)"], summary["CI high (%)"], strict=True)
    ],
)
summary = summary.drop(columns=["CI low (%)", "CI high (%)"])
widgets.summary_dataframe(summary, key="compare.summary")
st.caption(
    "Agreement: share of samples where the TFLite top-1 class equals the original's, with a "
    "95 % Wilson interval over n samples. Sizes in MB (10⁶ bytes); latency per invoke at batch 1."
)

# ---- charts ------------------------------------------------------------------------------------------
left, right = st.columns(2)
sizes = sizes_bytes(items)
with left:
    if sizes:
        reductions = {i.label: i.variant.get("size_reduction_pct") for i in items}
        st.plotly_chart(size_figure(sizes, reductions_pct=reductions), key="compare.sizes_chart")
    else:
        st.info("No variant has a size yet.")
with right:
    agreement = [i.variant.get("top1_agreement_pct") for i in items]
    if any(a is not None for a in agreement):
        st.plotly_chart(
            agreement_figure(
                item_labels,
                agreement,
                [i.variant.get("top1_agreement_ci95") for i in items],
                threshold_pct=threshold_pct(items),
                n=[i.variant.get("n") for i in items],
            ),
            key="compare.agreement_chart",
        )
    else:
        st.info("No variant has finished scoring yet.")
st.subheader("Trade-off across runs")
choose.tradeoff_chart([{**i.variant, "name": i.label} for i in items], key="compare.tradeoff_chart")
percentiles = latency_percentiles(items)
if percentiles:
    log_y = st.toggle("Log scale", key=keys.COMPARE_LOG, value=False)
    st.plotly_chart(
        latency_percentiles_figure(percentiles, log_y=log_y), key="compare.latency_chart"
    )
    st.caption(
        "Latency is only comparable between runs measured on the same CPU with the same "
        "thread count — check **What changed** above."
    )
