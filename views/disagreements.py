"""Disagreements: a gallery of samples where a variant and the original pick different classes."""

import math

import streamlit as st

from core.reporting.results import SORTS, pick_samples
from core.reporting.runtimes import runtime_label
from core.types import short_name
from ui import flip_hunt, keys, runtimes, widgets

PAGE_SIZE = 24

st.title("Disagreements")
res = widgets.require_results()
widgets.run_header(res)

names = widgets.finished_variants_or_stop(res)

flip = st.session_state.get(keys.DISAGREE_FLIP)
counts = {n: int(res.variant(n).result.disagreements or 0) for n in names}
if st.session_state.get(keys.DISAGREE_VARIANT) not in names:
    # Open on the variant with the most flips: that is what a user came to look at.
    st.session_state[keys.DISAGREE_VARIANT] = max(names, key=lambda n: counts[n])
c1, c2, c3 = st.columns([1, 1.4, 1])
variant = c1.selectbox(
    "Variant",
    names,
    key=keys.DISAGREE_VARIANT,
    format_func=lambda n: f"{short_name(n)} — {counts[n]} disagree",
)
sort = c2.selectbox("Sort by", list(SORTS), key=keys.DISAGREE_SORT)
class_options = ["all classes", *range(res.num_classes)]
ref_class = c3.selectbox(
    "Original's class",
    class_options,
    key=keys.DISAGREE_CLASS,
    format_func=lambda c: c if isinstance(c, str) else res.class_label(c),
)
c4, c5 = st.columns([1, 3])
at_risk = c4.toggle(
    "At risk instead",
    key=keys.DISAGREE_AT_RISK,
    help="Samples that still agree, but where the original's top-1 margin is "
    "small: the next quantization step may flip them.",
)
margin = c5.slider(
    "Margin below (probability)",
    0.0,
    1.0,
    0.1,
    0.01,
    key=keys.DISAGREE_MARGIN,
    disabled=not at_risk,
)

by_runtime = runtimes.runtime_filter(res, variant)
# One image filter at a time: a runtime's flips, else a perturbation's new flips.
by_perturbation = flip_hunt.perturbation_filter(res, variant) if by_runtime is None else None
only = by_runtime or by_perturbation

flip_cells = None
if flip and flip[0] == variant and not at_risk and only is None:
    flip_cells = (int(flip[1]), int(flip[2]))
    st.info(
        f"Showing only original **{res.class_name(flip_cells[0])}** → TFLite "
        f"**{res.class_name(flip_cells[1])}** (selected in the flip matrix).",
        icon=":material/filter_alt:",
    )
    if st.button("Clear this filter", key=keys.DISAGREE_CLEAR_FLIP, icon=":material/close:"):
        st.session_state.pop(keys.DISAGREE_FLIP, None)
        st.rerun()

table = res.variant_summary(variant)  # the filter and sort columns; the gallery reads its page
risk_margin = float(margin) if at_risk else None
chosen_class = None if isinstance(ref_class, str) else int(ref_class)
rows = pick_samples(
    table,
    at_risk_margin=risk_margin,
    ref_class=chosen_class,
    flip=flip_cells,
    sort=str(sort),
    only=None if only is None else only[1],
)
v = res.variant(variant)
n = len(table)
if by_runtime is not None:
    runtime, flipped = by_runtime
    st.info(
        f"Showing the {len(flipped)} image(s) whose top-1 under **{runtime_label(runtime)}** "
        f"differs from the same file's top-1 under XNNPACK (the answers shown): the runtime "
        "flipped them, not the quantization.",
        icon=":material/filter_alt:",
    )
if by_perturbation is not None:
    perturbation, flipped = by_perturbation
    st.info(
        f"Showing the {len(flipped)} image(s) the variant newly flips under **{perturbation}** "
        "(the original kept its answer there; the clean image and its answers are shown).",
        icon=":material/filter_alt:",
    )
if rows.empty and only is not None:
    st.info("No flipped image matches the class filter; choose **all classes**.")
    st.stop()
if rows.empty:
    # Name the filter that emptied the list, not the margin or the run.
    kind = "at-risk sample" if at_risk else "disagreement"
    other_classes = pick_samples(table, at_risk_margin=risk_margin, flip=flip_cells)
    other_cells = pick_samples(table, at_risk_margin=risk_margin)
    if chosen_class is not None and not other_classes.empty:
        st.info(
            f"No {kind} where the original predicts **{res.class_name(chosen_class)}**: the "
            f"class filter emptied the list ({len(other_classes)} in other classes). "
            "Choose **all classes** to see them.",
            icon=":material/filter_alt:",
        )
    elif flip_cells is not None and not other_cells.empty:
        st.info(
            f"No {kind} in the selected flip-matrix cell matches the class filter; "
            "clear one of the filters.",
            icon=":material/filter_alt:",
        )
    elif at_risk:
        st.success(
            f"No agreeing sample has a margin below {margin:.2f} (n = {n}).",
            icon=":material/check_circle:",
        )
    elif int(v.result.disagreements or 0) == 0:
        st.success(f"No disagreements — all {n} samples agree.", icon=":material/check_circle:")
    else:
        st.info("No disagreement matches these filters.")
    st.stop()

kind = (
    "runtime-flipped image"
    if by_runtime
    else "perturbation-flipped image"
    if by_perturbation
    else "at-risk sample"
    if at_risk
    else "disagreement"
)
what = kind + ("" if len(rows) == 1 else "s")
pages = max(1, math.ceil(len(rows) / PAGE_SIZE))
c6, c7 = st.columns([3, 1])
c6.markdown(
    f"**{len(rows)}** {what} of **{n}** samples for **{variant}**"
    f" (in total {v.result.disagreements} disagree)."
)
if int(st.session_state.get(keys.DISAGREE_PAGE, 1)) > pages:
    st.session_state[keys.DISAGREE_PAGE] = 1  # filters shrank the list below the current page
page = (
    int(
        c7.number_input(
            f"Page (of {pages})", min_value=1, max_value=pages, value=1, key=keys.DISAGREE_PAGE
        )
    )
    if pages > 1
    else 1
)
widgets.gallery(res, variant, rows, key="disagreements", page_size=PAGE_SIZE, page=page)
