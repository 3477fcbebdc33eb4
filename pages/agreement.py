"""Agreement: agreement and accuracy per variant with intervals, and the clickable flip matrix."""

import streamlit as st

from core.figures import accuracy_figure, agreement_figure, flip_matrix_figure
from ui import fmt, keys, widgets

st.title("Agreement")
res = widgets.require_results()
widgets.run_header(res)
widgets.chance_warning(res)

done = [v for v in res.variants if v.get("status", "done") == "done"]
if not done:
    st.info("No variant has finished yet.")
    st.stop()
names = [str(v.get("name") or v.get("mode")) for v in done]
left, right = st.columns(2)
with left:
    st.plotly_chart(
        agreement_figure(
            names,
            [v.get("top1_agreement_pct") for v in done],
            [
                tuple(v["top1_agreement_ci95"]) if v.get("top1_agreement_ci95") else None
                for v in done
            ],
            threshold_pct=res.threshold_pct,
            n=[v.get("n") for v in done],
        ),
        key="agreement.bars",
    )
with right:
    if res.dataset.get("has_labels") and res.reference.get("accuracy_pct") is not None:
        st.plotly_chart(
            accuracy_figure(
                names,
                res.reference.get("accuracy_pct"),
                [v.get("tflite_accuracy_pct") for v in done],
            ),
            key="agreement.accuracy",
        )
        rows = [
            {
                "variant": n_,
                "accuracy original": fmt.pct(v.get("reference_accuracy_pct"), digits=2),
                "accuracy TFLite": fmt.pct(v.get("tflite_accuracy_pct"), digits=2),
                "Δ (pp)": v.get("accuracy_delta_pct"),
                "McNemar p": v.get("mcnemar_p"),
                "n": v.get("n"),
            }
            for n_, v in zip(names, done, strict=True)
        ]
        st.dataframe(rows, hide_index=True, key="agreement.accuracy_table")
    else:
        st.info("The data set has no labels, so accuracy cannot be measured; agreement only.")

split_rows = widgets.split_rows(done)
if split_rows:
    st.subheader("Conversion or quantization?")
    st.caption(
        "Each disagreement of a quantized variant, split by the float32 TFLite pivot: "
        "conversion-caused where the float32 TFLite already disagrees with the original, "
        "quantization-caused where it agrees and the quantized variant does not."
    )
    st.dataframe(split_rows, hide_index=True, key="agreement.split")

st.subheader("Which classes flip")
counts = {str(v.get("name") or v.get("mode")): int(v.get("disagreements") or 0) for v in done}
if st.session_state.get(keys.AGREEMENT_VARIANT) not in names:
    # Open on the variant with the most flips: an all-zero matrix tells nothing.
    st.session_state[keys.AGREEMENT_VARIANT] = max(names, key=lambda n: counts[n])
variant = st.selectbox(
    "Variant",
    names,
    key=keys.AGREEMENT_VARIANT,
    format_func=lambda n: f"{n} — {counts[n]} disagree",
)
v = res.variant(variant)
matrix = v.get("flip_matrix")
if not matrix or int(v.get("disagreements") or 0) == 0:
    st.success(
        f"No disagreements — all {v.get('n')} samples agree.", icon=":material/check_circle:"
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
    st.switch_page("pages/disagreements.py")
