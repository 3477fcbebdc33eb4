"""Targets: where the model will run, the pick for that target, and each variant's
deployability pre-flight (integer-only, TFLite-Micro, Arm Ethos-U with Vela)."""

import pandas as pd
import streamlit as st

from core.reporting.recommend import recommendation
from core.reporting.targets import (
    ACCELERATOR,
    DEPLOYABILITY_COLUMNS,
    DEPLOYABILITY_NOTES,
    MICRO_COLUMNS,
    PROFILES,
    VELA_COLUMNS,
    Target,
    deployability_rows,
)
from ui import choose, fmt, keys, runs, widgets

st.title("Targets")
res = widgets.require_results()
widgets.run_header(res)

options = res.report.options
run_target = str(options.get("target") or Target.CPU)
names = [str(t) for t in Target]
left, right = st.columns([3, 1])
with left:
    target = st.segmented_control(
        "Target",
        names,
        default=run_target if run_target in names else str(Target.CPU),
        key=keys.TARGETS_TARGET,
        help="Where the model will run. The run's own target (--target) is preselected.",
    ) or str(Target.CPU)
with right:
    stored_limit = options.get("arena_kb")
    arena_kb = st.number_input(
        "Arena limit for mcu (KiB, 0 = none)",
        min_value=0,
        value=int(stored_limit or 0),
        step=16,
        key=keys.TARGETS_ARENA,
        help="The largest TFLite-Micro arena the microcontroller has room for.",
    )
profile = PROFILES[Target(target)]
st.caption(
    f"**{fmt.text(profile.title)}** needs {fmt.text(profile.needs)}. "
    f"Figures: {fmt.text(profile.measured_on)}."
)

limit = float(arena_kb) if arena_kb else None
rec = recommendation(res.report, target, arena_limit_kb=limit)
finished = runs.run_status(res.run_id).get("status") not in ("queued", "running")
if finished:
    choose.recommendation_box(res.report, rec)
    for entry in rec["excluded"]:
        st.markdown(f"- **{fmt.text(entry['variant'])}** excluded: {fmt.text(entry['reason'])}")
    for entry in rec["listed_once"]:
        st.markdown(
            f"- **{fmt.text(entry['variant'])}** is listed once, as "
            f"**{fmt.text(entry['same_as'])}**: its outputs are identical bit for bit"
        )
choose.tradeoff_chart(
    res.variants,
    key="targets.tradeoff_chart",
    pick=rec.get("variant") if finished else None,
    target=target,
    arena_limit_kb=limit,
)

st.subheader("Deployability pre-flight")
rows = deployability_rows(res.variants)
if rows:
    for title, columns in (
        ("Integer-only check and TFLite-Micro", MICRO_COLUMNS),
        (f"Arm Ethos-U (Vela, {ACCELERATOR})", VELA_COLUMNS),
    ):
        st.markdown(f"**{title}**")
        widgets.table(
            pd.DataFrame(rows, columns=list(DEPLOYABILITY_COLUMNS))[list(columns)],
            width="stretch",
            key=f"{keys.TARGETS_TABLE}.{columns[-1]}",
        )
else:
    st.info("No deployability pre-flight in this run yet (runs made before it have none).")
for note in DEPLOYABILITY_NOTES:
    st.caption(fmt.text(note))
