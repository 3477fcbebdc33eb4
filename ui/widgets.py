"""Shared widgets: the run header, verdict cards, the sample gallery and its detail dialog."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import streamlit as st

from core.errors import QuantLensError
from core.figures import topk_figure
from core.results import RunResults
from ui import cache, fmt, runs

_BAD_STATES = ("failed", "crashed", "timeout", "cancelled")


def require_results() -> RunResults:
    """The selected run's results, or an explanatory empty state and st.stop()."""
    rid = runs.selected_run_id()
    if rid is None:
        st.info(
            "No run yet. Go to **Setup**, pick a model and data, and press **Run**.",
            icon=":material/info:",
        )
        st.page_link("pages/setup.py", label="Open Setup", icon=":material/tune:")
        st.stop()
    try:
        res = cache.results(rid)
    except QuantLensError as exc:
        status = runs.run_status(rid).get("status")
        if status in ("queued", "running"):
            st.info(
                f"Run {rid} is {status}; results appear here as soon as the first variant is done.",
                icon=":material/hourglass_top:",
            )
            runs.live_progress(rid)
        else:
            st.error(str(exc))
        st.stop()
    return res


def run_header(res: RunResults) -> None:
    """One caption line naming the run, its model, data and sample count."""
    ref, ds = res.reference, res.dataset
    name = res.run_name or res.run_id
    status = runs.run_status(res.run_id).get("status") or res.report.get("run", {}).get("status")
    st.caption(
        f"Run **{fmt.text(name)}** ({fmt.text(status)}) · model {fmt.code(ref.get('path', '?'))} "
        f"({fmt.text(ref.get('format', '?'))}) · data {fmt.code(ds.get('path', '?'))} · "
        f"{ds.get('num_samples', '?')} samples, {ds.get('num_skipped', 0)} skipped · "
        f"{res.num_classes} classes"
        + (
            " · **trusted mode** (the model's own code was allowed to run)"
            if res.report.get("run", {}).get("trusted")
            else ""
        )
    )


def finished_variants_or_stop(res: RunResults) -> list[str]:
    """The variants with results; the page says so and stops when there is none yet."""
    names = res.variant_names(finished_only=True)
    if not names:
        st.info("No variant has finished yet.")
        st.stop()
    return names


def chance_warning(res: RunResults) -> None:
    """A loud error when the original's accuracy is near chance: the preset is probably wrong."""
    if res.reference_near_chance:
        c = res.num_classes
        st.error(
            f"**Original model accuracy is {fmt.pct(res.reference.get('accuracy_pct'))}, near "
            f"chance ({100.0 / c:.1f} % for {c} classes): preprocessing is probably wrong.** "
            "Agreement numbers are meaningless when both models see garbage. Check the preset "
            f"(this run used {fmt.code(res.report.get('preprocessing', {}).get('preset', '?'))}) "
            "and the labels.",
            icon=":material/warning:",
        )


def verdict_card(res: RunResults, v: dict[str, Any]) -> None:
    """A bordered card: PASS/FAIL badge, agreement with CI and n, size, p50 latency."""
    name = str(v.get("name") or v.get("mode"))
    status = str(v.get("status") or "done")
    with st.container(border=True):
        st.markdown(f"#### {fmt.text(name)}")
        if status in _BAD_STATES:
            st.badge(status.upper(), color="red", icon=":material/error:")
            st.caption(fmt.text(v.get("error") or f"variant {status}"))
            return
        if status != "done":
            st.badge(status.upper(), color="gray", icon=":material/schedule:")
            return
        passed = v.get("passed")
        if passed is True:
            st.badge("PASS", color="green", icon=":material/check:")
        elif passed is False:
            st.badge("FAIL", color="red", icon=":material/close:")
        else:
            st.badge("NO VERDICT", color="gray")
        st.metric(
            "Top-1 agreement",
            fmt.pct(v.get("top1_agreement_pct"), digits=2),
            help=f"Share of samples where both models pick the same class; threshold "
            f"{res.threshold_pct:g} %.",
        )
        st.caption(
            f"95 % CI {fmt.ci(v.get('top1_agreement_ci95'))} · n = {v.get('n')} · "
            f"{v.get('disagreements')} disagree"
        )
        red = v.get("size_reduction_pct")
        st.metric(
            "Size",
            fmt.mb(v.get("size_bytes")),
            delta=None if red is None else f"-{float(red):.1f} % vs original",
            delta_color="inverse",
        )
        lat = v.get("latency_ms") or {}
        sp = v.get("speedup_vs_reference")
        st.metric(
            "p50 latency",
            fmt.ms(lat.get("p50")),
            delta=None if sp is None else fmt.speedup(sp),
            delta_color="normal" if sp is None or float(sp) >= 1 else "inverse",
        )
        if not lat and v.get("latency_note"):  # e.g. the run was cancelled before timing
            st.caption(fmt.text(v["latency_note"]))


def summary_columns() -> dict[str, Any]:
    """Number formats of the summary tables (Overview and Compare share their column names)."""
    mb = st.column_config.NumberColumn(format="%.3f")
    share = st.column_config.NumberColumn(format="%.1f")
    pct = st.column_config.NumberColumn(format="%.2f")
    return {
        "size (MB)": mb,
        "reduction vs original (%)": share,
        "reduction vs float32 TFLite (%)": share,
        "top-1 agreement (%)": pct,
        "top-k agreement (%)": pct,
        "accuracy original (%)": pct,
        "accuracy TFLite (%)": pct,
        "p50 (ms)": mb,
        "p99 (ms)": mb,
    }


def summary_table(res: RunResults) -> pd.DataFrame:
    """One row per variant with the headline numbers (plain values; formatting by column config)."""
    rows = []
    ref = res.reference
    rows.append(
        {
            "model": "original",
            "status": "reference",
            "verdict": "",
            "size (MB)": (ref.get("size_bytes") or 0) / 1e6,
            "reduction vs original (%)": None,
            "reduction vs float32 TFLite (%)": None,
            "top-1 agreement (%)": None,
            "95 % CI": "",
            "top-k agreement (%)": None,
            "accuracy original (%)": ref.get("accuracy_pct"),
            "accuracy TFLite (%)": None,
            "disagreements": None,
            "n": res.dataset.get("num_samples"),
            "p50 (ms)": (ref.get("latency_ms") or {}).get("p50"),
            "p99 (ms)": (ref.get("latency_ms") or {}).get("p99"),
        }
    )
    for v in res.variants:
        lat = v.get("latency_ms") or {}
        passed = v.get("passed")
        rows.append(
            {
                "model": str(v.get("name") or v.get("mode")),
                "status": str(v.get("status")),
                "verdict": "PASS" if passed is True else "FAIL" if passed is False else "",
                "size (MB)": None if v.get("size_bytes") is None else v["size_bytes"] / 1e6,
                "reduction vs original (%)": v.get("size_reduction_pct"),
                "reduction vs float32 TFLite (%)": v.get("size_reduction_vs_float32_pct"),
                "top-1 agreement (%)": v.get("top1_agreement_pct"),
                "95 % CI": fmt.ci(v.get("top1_agreement_ci95")),
                "top-k agreement (%)": v.get("topk_agreement_pct"),
                "accuracy original (%)": v.get("reference_accuracy_pct"),
                "accuracy TFLite (%)": v.get("tflite_accuracy_pct"),
                "disagreements": v.get("disagreements"),
                "n": v.get("n"),
                "p50 (ms)": lat.get("p50"),
                "p99 (ms)": lat.get("p99"),
            }
        )
    return pd.DataFrame(rows)


# ---- gallery ---------------------------------------------------------------------------------
@st.dialog("Sample", width="large")
def sample_dialog(run_id: str, variant: str, row: int) -> None:
    """A larger image and both top-5 lists of one sample."""
    try:
        res = cache.results(run_id)
    except QuantLensError as exc:
        st.error(str(exc))
        return
    df = res.variant_samples(variant)
    rec = df[df["row"] == row]
    if rec.empty:
        st.warning("This sample is no longer in the run.")
        return
    r = rec.iloc[0]
    left, right = st.columns([1, 2])
    with left:
        img = cache.thumbnail(res.image_path(str(r["relpath"])), size=cache.LARGE_PX)
        if img is None:
            st.warning("Image file not found.")
        else:
            st.image(img)
        st.text(str(r["relpath"]))
        label = r.get("label")
        if label is not None and not pd.isna(label):
            st.caption(f"label: {fmt.text(res.class_name(int(label)))}")
        st.caption(f"original margin (top-1 − top-2): {float(r['ref_margin']):.4f}")
        st.caption(f"max |Δp|: {float(r['max_abs_delta']):.4f} · KL: {float(r['kl']):.4f}")
    with right:
        ref_p, tfl_p = res.probs("reference"), res.probs(variant)
        if ref_p is None or tfl_p is None:
            st.info("Probability arrays are not in this run directory.")
        else:
            st.plotly_chart(
                topk_figure(np.asarray(ref_p[row]), np.asarray(tfl_p[row]), res.class_names),
                key=f"dialog.topk.{variant}.{row}",
                config={"displayModeBar": False},
            )


def tile_caption(res: RunResults, r: pd.Series) -> str:
    """Text under a gallery tile: both top-1 classes with probabilities and the delta."""
    ref_c = fmt.text(res.class_name(int(r["ref_top1"])))
    tfl_c = fmt.text(res.class_name(int(r["tfl_top1"])))
    return (
        f"orig **{ref_c}** {float(r['ref_top1_prob']):.2f}  \n"
        f"tflite **{tfl_c}** {float(r['tfl_top1_prob']):.2f}  \n"
        f"Δp {float(r['top1_prob_delta']):+.3f}"
    )


def gallery(
    res: RunResults,
    variant: str,
    df: pd.DataFrame,
    *,
    key: str,
    page_size: int = 24,
    columns: int = 6,
    page: int = 1,
) -> None:
    """A grid of sample tiles (image + both predictions); each tile opens `sample_dialog`."""
    start = (page - 1) * page_size
    chunk = df.iloc[start : start + page_size]
    for offset in range(0, len(chunk), columns):
        cols = st.columns(columns)
        for col, (_, r) in zip(
            cols, chunk.iloc[offset : offset + columns].iterrows(), strict=False
        ):
            with col, st.container(border=True):
                img = cache.thumbnail(res.image_path(str(r["relpath"])))
                if img is None:
                    st.caption(":gray[image missing]")
                else:
                    st.image(img, width=cache.THUMB_PX)
                st.caption(tile_caption(res, r))
                if st.button(
                    "Details",
                    key=f"{key}.tile.{int(r['row'])}",
                    icon=":material/zoom_in:",
                    use_container_width=True,
                ):
                    sample_dialog(res.run_id, variant, int(r["row"]))
