"""Overview: a verdict card per variant and the summary table of the selected run."""

import streamlit as st

from core.reporting.calibration import calibration_line
from core.reporting.report import NO_VERDICT, judged_variants, verdict_rule_text
from ui import choose, fmt, keys, runs, runtimes, widgets
from ui.downloads import render_downloads

st.title("Overview")
res = widgets.require_results()
widgets.run_header(res)
widgets.chance_warning(res)
widgets.tracking_note(res)

if runs.run_status(res.run_id).get("status") in ("queued", "running"):
    runs.live_progress(res.run_id)

variants = res.variants
# The float32 pivot QuantLens added on its own is shown, never judged, so never counted here.
judged = judged_variants(variants)
verdicts = [widgets.variant_verdict(res, v) for v in judged]
if NO_VERDICT in verdicts:
    st.markdown(
        f"**No verdict** for {verdicts.count(NO_VERDICT)} of {len(judged)} variant(s): "
        "agreement with an original that is near chance means nothing."
    )
else:
    failed = verdicts.count("FAIL")
    st.markdown(
        f"**{verdicts.count('PASS')} of {len(judged)}** variant(s) meet the "
        f"**{res.threshold_pct:g} %** top-1 agreement threshold"
        + (f"; {failed} fall below it." if failed else ".")
    )
preset_used = res.report.preprocessing.get("preset")
st.caption(
    f"Verdict: {verdict_rule_text(res.report.verdict_rule, res.threshold_pct, preset_used)}."
)
calibration = calibration_line(res.report.calibration)
if calibration:
    st.caption(calibration[0].upper() + calibration[1:] + ".")

per_row = 4
for start in range(0, len(variants), per_row):
    cols = st.columns(per_row)
    for col, v in zip(cols, variants[start : start + per_row], strict=False):
        with col:
            widgets.verdict_card(res, v)

st.subheader("Trade-off and recommendation")
finished = runs.run_status(res.run_id).get("status") not in ("queued", "running")
if finished:
    choose.recommendation_box(res.report)
# Drawn for the run's target (--target), as its recommendation is; the Targets page has the others.
choose.tradeoff_chart(
    variants,
    key="overview.tradeoff_chart",
    pick=choose.report_recommendation(res.report).get("variant") if finished else None,
    target=res.report.options.get("target"),
    arena_limit_kb=res.report.options.get("arena_kb"),
)

st.subheader("Summary")
table = widgets.summary_table(res)
widgets.summary_dataframe(table, key=keys.OVERVIEW_TABLE)
k = next((v.result.k for v in variants if v.result.k), None)
ref = res.reference
st.caption(
    f"Agreement: the TFLite top-1 class equals the original's; top-{k or 'k'}: the original's "
    f"top-1 is among the TFLite top-{k or 'k'}. 95 % Wilson intervals. Original accuracy "
    f"{fmt.pct(ref.get('accuracy_pct'), digits=2)} on the labelled samples. "
    f"Sizes in MB (10⁶ bytes); latency per invoke at batch 1."
)
runtimes.matrix_table(res)

command = res.report.run.command
if command:
    with st.expander("Reproduce this run from the command line"):
        st.code(str(command), language="bash")

with st.expander("Downloads", icon=":material/download:"):
    render_downloads(res.run_dir)
