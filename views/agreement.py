"""Agreement: agreement and accuracy per variant with intervals, and the clickable flip matrix."""

import streamlit as st

from core.reporting.figures import (
    accuracy_figure,
    agreement_figure,
    flip_matrix_figure,
    per_class_agreement_figure,
)
from core.reporting.results import per_class_agreement
from core.reporting.sweep import sweep_figure, swept_modes
from core.types import short_name
from ui import fmt, keys, widgets

PER_CLASS_CHART_LIMIT = 30  # more bars than this are unreadable; the table lists every class

st.title("Agreement")
res = widgets.require_results()
widgets.run_header(res)
widgets.chance_warning(res)

done = [v for v in res.variants if v.result.finished_ok]
if not done:
    st.info("No variant has finished yet.")
    st.stop()
names = [v.name for v in done]
left, right = st.columns(2)
with left:
    st.plotly_chart(
        agreement_figure(
            names,
            [v.result.top1_agreement_pct for v in done],
            [v.result.top1_agreement_ci95 for v in done],
            threshold_pct=res.threshold_pct,
            n=[v.result.n for v in done],
        ),
        key="agreement.bars",
    )
labelled = bool(res.dataset.get("has_labels")) and res.reference.get("accuracy_pct") is not None
with right:
    if labelled:
        st.plotly_chart(
            accuracy_figure(
                names,
                res.reference.get("accuracy_pct"),
                [v.result.tflite_accuracy_pct for v in done],
            ),
            key="agreement.accuracy",
        )
    else:
        st.info("The data set has no labels, so accuracy cannot be measured; agreement only.")
if labelled:
    # Below both charts, at full width: in the right half its last column, n, was cut off.
    widgets.table(
        [
            {
                "variant": short_name(n_),
                "accuracy original": fmt.pct(v.result.reference_accuracy_pct, digits=2),
                "accuracy TFLite": fmt.pct(v.result.tflite_accuracy_pct, digits=2),
                "Δ (pp)": v.result.accuracy_delta_pct,
                "McNemar p": v.result.mcnemar_p,
                "n": v.result.n,
            }
            for n_, v in zip(names, done, strict=True)
        ],
        key="agreement.accuracy_table",
    )

split_rows = widgets.split_rows(done)
if split_rows:
    st.subheader("Conversion or quantization?")
    st.caption(
        "Each disagreement of a quantized variant, split by the float32 TFLite pivot: "
        "conversion-caused where the float32 TFLite already disagrees with the original, "
        "quantization-caused where it agrees and the quantized variant does not."
    )
    widgets.table(split_rows, key="agreement.split")

sweep = res.report.sweep
if sweep is not None and swept_modes(sweep):
    st.subheader("Calibration sweep")
    st.markdown(sweep.statement)
    st.plotly_chart(sweep_figure(sweep), key="agreement.sweep_chart")
    st.caption(
        f"Each point is quantized on the {sweep.backend} backend with that many "
        f"calibration images ({sweep.seeds} seeded draws per size from "
        f"{sweep.pool_images} {sweep.pool_source} images) and evaluated on the "
        f"run's {sweep.evaluated_n} images; line: mean over seeds, bars: min–max. "
        "Flattens: the smallest size within "
        f"{sweep.flat_within_pp} pp of the largest size's mean agreement. The .tflite "
        "of every point is in the run folder's sweep/."
    )

st.subheader("Which variant")
counts = {v.name: int(v.result.disagreements or 0) for v in done}
if st.session_state.get(keys.AGREEMENT_VARIANT) not in names:
    # Open on the variant with the most flips: an all-zero matrix tells nothing.
    st.session_state[keys.AGREEMENT_VARIANT] = max(names, key=lambda n: counts[n])
variant = st.selectbox(
    "Variant",
    names,
    key=keys.AGREEMENT_VARIANT,
    format_func=lambda n: f"{short_name(n)} — {counts[n]} disagree",
)
v = res.variant(variant)

st.subheader("Agreement per class")
per_class = per_class_agreement(res.variant_summary(variant))
if per_class.empty:
    st.info("Per-sample results of this variant were not saved; no per-class view.")
else:
    labels = [res.class_label(c) for c in per_class["class"]]
    shown = min(len(per_class), PER_CLASS_CHART_LIMIT)
    st.plotly_chart(
        per_class_agreement_figure(
            labels[:shown],
            per_class["agreement_pct"].tolist()[:shown],
            list(
                zip(
                    per_class["ci95_low_pct"][:shown],
                    per_class["ci95_high_pct"][:shown],
                    strict=True,
                )
            ),
            per_class["n"].tolist()[:shown],
            threshold_pct=res.threshold_pct,
        ),
        key="agreement.per_class_chart",
    )
    st.caption(
        "Classes are the original's top-1 on each sample; worst first"
        + (
            f" (the chart shows the worst {shown} of {len(per_class)})."
            if shown < len(per_class)
            else "."
        )
        + " Few samples in a class give a wide interval: read n before blaming a class."
    )
    widgets.table(
        [
            {
                "class": label,
                "n": int(row.n),
                "agree": int(row.agree),
                "agreement (%)": float(row.agreement_pct),
                "95 % CI (%)": f"{row.ci95_low_pct:.1f}–{row.ci95_high_pct:.1f}",
            }
            for label, row in zip(labels, per_class.itertuples(index=False), strict=True)
        ],
        key="agreement.per_class_table",
        column_config={
            "agreement (%)": st.column_config.NumberColumn(format="%.1f"),
            # A one-letter header sizes the column to one digit: "52" showed for 528.
            "n": st.column_config.NumberColumn(width="small"),
            "agree": st.column_config.NumberColumn(width="small"),
        },
    )
    if st.session_state.get(keys.AGREEMENT_CLASS) not in per_class["class"].tolist():
        st.session_state.pop(keys.AGREEMENT_CLASS, None)  # from another variant: start at worst
    pick_col, go_col = st.columns([3, 1], vertical_alignment="bottom")
    picked = pick_col.selectbox(
        "Class to inspect",
        per_class["class"].tolist(),
        key=keys.AGREEMENT_CLASS,
        format_func=lambda c: labels[per_class["class"].tolist().index(c)],
    )
    if go_col.button(
        "Open in the gallery", key=keys.AGREEMENT_OPEN_CLASS, icon=":material/photo_library:"
    ):
        st.session_state[keys.DISAGREE_CLASS] = int(picked)
        st.session_state[keys.DISAGREE_FLIP] = None
        st.session_state[keys.DISAGREE_VARIANT] = variant
        st.session_state[keys.DISAGREE_AT_RISK] = False
        st.session_state[keys.DISAGREE_PAGE] = 1
        st.switch_page("views/disagreements.py")

hunted = [x for x in done if x.result.flip_hunt]
if hunted:
    st.subheader("Under small perturbations (flip hunt)")
    widgets.table(
        [
            {
                "variant": short_name(x.name),
                "perturbation": p.perturbation,
                "agreement (%)": None if p.agreement_pct is None else round(p.agreement_pct, 1),
                "95 % CI": "—" if p.ci95 is None else f"{p.ci95[0]:.1f}–{p.ci95[1]:.1f}",
                "n counted": p.counted,
                "new flips": p.new_flips,
                "original changed its answer": f"{p.original_changed} of {p.n}",
            }
            for x in hunted
            for p in x.result.flip_hunt or ()
        ],
        width="stretch",
        key=keys.AGREEMENT_FLIP_HUNT,
    )
    st.caption(
        "Agreement with the original on the perturbed images, counted only where the "
        "original's own answer did not change (its own changes beside it). New flips: images "
        "the variant agreed on unperturbed and not under the perturbation "
        "(`<variant>.flip-hunt.csv`)."
    )

st.subheader("Flips between classes")
matrix = v.result.flip_matrix
if not matrix or int(v.result.disagreements or 0) == 0:
    st.success(
        f"No disagreements — all {v.result.n} samples agree.", icon=":material/check_circle:"
    )
    st.stop()
st.caption("Click a cell to see those samples in the Disagreements gallery.")
event = st.plotly_chart(
    flip_matrix_figure(matrix, res.class_names),
    key=keys.AGREEMENT_FLIP_CHART,
    on_select="rerun",
    selection_mode="points",
)
points = widgets.selected_points(event)
if points:
    cell = points[0].get("customdata")
    if cell is None:  # heatmap points may report x/y labels only
        labels = list(res.class_names)
        cell = [labels.index(str(points[0]["y"])), labels.index(str(points[0]["x"]))]
    st.session_state[keys.DISAGREE_FLIP] = (variant, int(cell[0]), int(cell[1]))
    st.session_state[keys.DISAGREE_VARIANT] = variant
    st.session_state[keys.DISAGREE_AT_RISK] = False
    st.session_state[keys.DISAGREE_PAGE] = 1
    st.switch_page("views/disagreements.py")
