"""Shared widgets: the run header, verdict cards, the sample gallery and its detail dialog."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypedDict

import numpy as np
import pandas as pd
import streamlit as st

from core.errors import QuantLensError
from core.inputs import rundir
from core.metrics.agreement import CAUSE_CONVERSION, CAUSE_QUANTIZATION
from core.metrics.latency import quotable_p99
from core.reporting.figures import topk_figure
from core.reporting.report import (
    NO_VERDICT,
    PIVOT,
    display_name,
    fail_reason,
    is_pivot_only,
    no_verdict_reason,
    size_change_pct,
    too_few_samples_note,
)
from core.reporting.results import RunResults
from core.reporting.sections.variant import Variant
from core.reporting.speedup import BASELINE_LABEL, speedup_lines
from core.types import UNSUCCESSFUL_STATUSES, RunStatus, short_name
from ui import cache, fmt, runs

_BAD_STATES = UNSUCCESSFUL_STATUSES


def require_results() -> RunResults:
    """The selected run's results, or an explanatory empty state and st.stop()."""
    rid = runs.selected_run_id()
    if rid is None:
        st.info(
            "No run yet. Go to **Setup**, pick a model and data, and press **Run**.",
            icon=":material/info:",
        )
        st.page_link("views/setup.py", label="Open Setup", icon=":material/tune:")
        st.stop()
    try:
        res = cache.results(rid)
    except QuantLensError as exc:
        status = runs.run_status(rid)
        if status.get("status") in ("queued", "running"):
            st.info(
                f"Run {rid} is {status['status']}; results appear here as soon as the first "
                "variant is done.",
                icon=":material/hourglass_top:",
            )
            runs.live_progress(rid)
        else:
            st.error(fmt.text(_why_no_results(rid, status, exc)))
        st.stop()
    return res


def _why_no_results(rid: str, status: dict[str, Any], exc: QuantLensError) -> str:
    """A run that ended before its report was written has nothing to show: say how it ended
    (the reader's "wait for it to finish" is for runs that will)."""
    if (cache.run_path(rid) / rundir.REPORT).is_file():
        return str(exc)  # a report that cannot be read says so itself
    try:
        ended = RunStatus(str(status.get("status"))).ended_words
    except ValueError:
        return str(exc)
    why = f" ({status['error']})" if status.get("error") else ""
    return (
        f"Run {rid} {ended} before any variant finished{why}, so it has no results. "
        "Pick another run in the sidebar, or start it again on Setup."
    )


def run_header(res: RunResults) -> None:
    """One caption line naming the run, its model, data and sample count."""
    ref, ds = res.reference, res.dataset
    name = res.run_name or res.run_id
    status = runs.run_status(res.run_id).get("status") or res.report.run.status
    st.caption(
        f"Run **{fmt.text(name)}** ({fmt.text(status)}) · model {fmt.code(ref.get('path', '?'))} "
        f"({fmt.text(ref.get('format', '?'))}) · data {fmt.code(ds.get('path', '?'))} · "
        f"{ds.get('num_samples', '?')} samples, {ds.get('num_skipped', 0)} skipped · "
        f"{res.num_classes} classes"
        + (
            " · **trusted mode** (the model's own code was allowed to run)"
            if res.report.run.trusted
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
    reason = no_verdict_reason(res.reference)
    if reason is not None:
        st.error(
            f"**{fmt.text(reason[0].upper() + reason[1:])}.** "
            "Agreement numbers are meaningless when both models see garbage. Check the preset "
            f"(this run used {fmt.code(res.report.preprocessing.get('preset', '?'))}) "
            "and the labels.",
            icon=":material/warning:",
        )
    preset_advice(res)


def preset_advice(res: RunResults) -> None:
    """The preset check's one line when another preset was clearly better than the run's."""
    advice = (res.report.extra.get("preset_check") or {}).get("advice")
    if advice:
        st.warning(fmt.text(advice), icon=":material/tune:")


def tracking_note(res: RunResults) -> None:
    """Where the run was logged in MLflow, or the one line saying why logging failed."""
    tracking = res.report.tracking
    if tracking is None:
        return
    if tracking.error:
        st.warning(
            f"MLflow logging to {tracking.uri} failed: {tracking.error}. The run itself is "
            "complete.",
            icon=":material/cloud_off:",
        )
    elif tracking.run_id:
        st.caption(f"Logged to MLflow: run `{tracking.run_id}` at `{tracking.uri}`.")


def variant_verdict(res: RunResults, v: Variant) -> str:
    """PASS, FAIL, NO VERDICT, or PIVOT for the float32 pivot the user did not select.

    A run whose original is near chance never shows PASS, even when its report predates the
    engine's own no-verdict rule.
    """
    if is_pivot_only(v):
        return PIVOT
    if v.result.verdict_reason or (v.result.passed is not None and res.reference_near_chance):
        return NO_VERDICT
    passed = v.result.passed
    return "PASS" if passed is True else "FAIL" if passed is False else ""


def no_verdict_text(res: RunResults, v: Variant) -> str:
    """Why a variant has no verdict: the report's reason, else one rebuilt from the original."""
    reason = v.result.verdict_reason or no_verdict_reason(res.reference)
    return str(reason or "no verdict")


def verdict_card(res: RunResults, v: Variant) -> None:
    """A bordered card: PASS/FAIL badge, agreement with CI and n, size, p50 latency."""
    status = v.status
    with st.container(border=True):
        st.markdown(f"#### {fmt.text(display_name(res.report, v))}")
        if status in _BAD_STATES:
            st.badge(status.upper(), color="red", icon=":material/error:")
            st.caption(fmt.text(v.result.error or f"variant {status}"))
            return
        if status != "done":
            st.badge(status.upper(), color="gray", icon=":material/schedule:")
            return
        shown = variant_verdict(res, v)
        if shown == PIVOT:
            st.badge(PIVOT, color="gray", icon=":material/call_split:")
            st.caption("Added to split each quantized variant's disagreements; not judged.")
        elif shown == "PASS":
            st.badge("PASS", color="green", icon=":material/check:")
        elif shown == "FAIL":
            st.badge("FAIL", color="red", icon=":material/close:")
        else:
            st.badge(NO_VERDICT, color="orange", icon=":material/warning:")
            st.caption(fmt.text(no_verdict_text(res, v)))
        st.metric(
            "Top-1 agreement",
            fmt.pct(v.result.top1_agreement_pct, digits=2),
            help=f"Share of samples where both models pick the same class; threshold "
            f"{res.threshold_pct:g} %.",
        )
        st.caption(
            f"95 % CI {fmt.ci(v.result.top1_agreement_ci95)} · n = {v.result.n} · "
            f"{v.result.disagreements} disagree"
        )
        split = split_line(v)
        if split:
            st.caption(split)
        reason = fail_reason(v, res.threshold_pct, res.report.verdict_rule)
        if shown == "FAIL" and reason:
            st.caption(fmt.text(f"FAIL: {reason}"))
        small_n = too_few_samples_note(v.result.n, res.threshold_pct)
        if small_n:
            st.caption(fmt.text(f"Too few images: {small_n}"))
        red = v.result.size_reduction_pct
        size_change = None if red is None else -float(red)
        st.metric(
            "Size",
            fmt.mb(v.result.size_bytes),
            delta=None if size_change is None else fmt.change(size_change) + " vs original",
            **change_metric_style(size_change),
        )
        lat = v.result.latency_ms or {}
        speed = speedup_lines(v.name, v.result.speedup, v.result.speedup_vs_reference)
        sp = speed.value
        # A speed-up s means p50 changed by (1/s − 1): 2× faster is −50 %, 0.8× is +25 %. The
        # factor itself is the caption's, just below: in the badge it was cut off mid-word.
        time_change = None if not sp else 100.0 * (1.0 / sp - 1.0)
        st.metric(
            "p50 latency",
            fmt.ms(lat.get("p50")),
            delta=None
            if sp is None or time_change is None
            else f"{fmt.change(time_change)} vs {BASELINE_LABEL}",
            **change_metric_style(time_change),
            help=SPEEDUP_COMPARES,
        )
        for line in (speed.headline, speed.vs_original):
            if line:
                st.caption(fmt.text(line))
        if speed.unstable:
            st.warning(fmt.text(speed.unstable), icon=":material/speed:")
        if v.result.latency_warning:
            st.warning(fmt.text(v.result.latency_warning), icon=":material/speed:")
        if not lat and v.result.latency_note:  # e.g. the run was cancelled before timing
            st.caption(fmt.text(v.result.latency_note))


def split_line(v: Variant) -> str:
    """The card line of the three-way split ("" for float32 or a run without a pivot)."""
    split = v.result.disagreement_split
    if not split or not v.result.disagreements:
        return ""
    return (
        f"of which {split.get('conversion')} conversion-caused "
        f"(float32 TFLite already disagrees) · {split.get('quantization')} quantization-caused"
    )


def split_rows(variants: list[Variant]) -> list[dict[str, Any]]:
    """One row per split variant for the Agreement table (none when the run has no pivot)."""
    rows = []
    for v in variants:
        split = v.result.disagreement_split
        if not split:
            continue
        rows.append(
            {
                "variant": short_name(v.name),
                "disagreements": v.result.disagreements,
                "conversion-caused": split.get("conversion"),
                "quantization-caused": split.get("quantization"),
            }
        )
    return rows


SPEEDUP_COMPARES = (
    "Speed-up: p50 of this variant's LiteRT invoke against p50 of float32 TFLite on the same "
    "runtime, block by block: the models are timed in interleaved blocks (A B A B …), the "
    "ratio is taken in each block, and the median ratio is shown with the range over blocks. "
    "The TensorFlow original's serving call is the second comparison. Batch 1, same input, "
    "same thread count, after warm-up."
)


class MetricStyle(TypedDict):
    delta_color: Literal["green", "red", "off"]
    delta_arrow: Literal["up", "down", "off"]


def change_metric_style(change_pct: float | None) -> MetricStyle:
    """Arrow and colour of a size or time change's metric card: a decrease is green and points
    down, an increase red and up. Set here, not read by Streamlit from the text, because the
    text carries a true minus sign (U+2212), as the tables do."""
    if change_pct is None or round(change_pct, 1) == 0.0:
        return {"delta_color": "off", "delta_arrow": "off"}
    if change_pct < 0:
        return {"delta_color": "green", "delta_arrow": "down"}
    return {"delta_color": "red", "delta_arrow": "up"}


EMPTY_CELL = "—"  # an unknown or not-applicable number: never Streamlit's grey "None"


def summary_columns() -> dict[str, Any]:
    """Number formats of the summary tables (Overview and Compare share their column names)."""
    mb = st.column_config.NumberColumn(format="%.3f")
    # Signed like the cards and the Size chart: -75.0 is smaller, +5.0 larger.
    change = st.column_config.NumberColumn(format="%+.1f")
    pct = st.column_config.NumberColumn(format="%.2f")
    # Integers in a column with a gap become floats in pandas: show them without ".0".
    count = st.column_config.NumberColumn(format="%d")
    return {
        "size (MB)": mb,
        "size change vs original (%)": change,
        "size change vs float32 TFLite (%)": change,
        "top-1 agreement (%)": pct,
        "top-k agreement (%)": pct,
        "accuracy original (%)": pct,
        "accuracy TFLite (%)": pct,
        "p50 (ms)": mb,
        "p99 (ms)": mb,
        "max (ms)": mb,
        "n": count,
        "k": count,
        "disagreements": count,
    }


def table(data: Any, *, key: str, **options: Any) -> Any:
    """`st.dataframe` as every page draws a table: no index column, and "—" in an empty cell
    (Streamlit's own is a grey "None"). Returns the selection event when `on_select` is given."""
    return st.dataframe(data, hide_index=True, placeholder=EMPTY_CELL, key=key, **options)


def summary_dataframe(summary: pd.DataFrame, *, key: str) -> None:
    """Draw a summary table (Overview, Compare): formatted numbers, "—" in empty cells.

    The values stay numbers, so sorting a column in the browser still sorts by value.
    """
    table(summary, key=key, column_config=summary_columns())


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
            "size change vs original (%)": None,
            "size change vs float32 TFLite (%)": None,
            "top-1 agreement (%)": None,
            "95 % CI": "",
            "top-k agreement (%)": None,
            "accuracy original (%)": ref.get("accuracy_pct"),
            "accuracy TFLite (%)": None,
            "disagreements": None,
            "n": res.dataset.get("num_samples"),
            "p50 (ms)": (ref.get("latency_ms") or {}).get("p50"),
            "p99 (ms)": quotable_p99(ref.get("latency_ms") or {}),
            "max (ms)": (ref.get("latency_ms") or {}).get("max"),
        }
    )
    for v in res.variants:
        lat = v.result.latency_ms or {}
        rows.append(
            {
                "model": short_name(v.name),
                "status": str(v.result.status),
                "verdict": variant_verdict(res, v),
                "size (MB)": None if v.result.size_bytes is None else v.result.size_bytes / 1e6,
                "size change vs original (%)": size_change_pct(v.result.size_reduction_pct),
                "size change vs float32 TFLite (%)": size_change_pct(
                    v.result.size_reduction_vs_float32_pct
                ),
                "top-1 agreement (%)": v.result.top1_agreement_pct,
                "95 % CI": fmt.ci(v.result.top1_agreement_ci95),
                "top-k agreement (%)": v.result.topk_agreement_pct,
                "accuracy original (%)": v.result.reference_accuracy_pct,
                "accuracy TFLite (%)": v.result.tflite_accuracy_pct,
                "disagreements": v.result.disagreements,
                "n": v.result.n,
                "p50 (ms)": lat.get("p50"),
                "p99 (ms)": quotable_p99(lat),  # only from 100 runs; below, max says it
                "max (ms)": lat.get("max"),
            }
        )
    return pd.DataFrame(rows)


def selected_points(event: Any) -> list[dict[str, Any]]:
    """The points a user selected in an `on_select="rerun"` chart (empty when none).

    The event is a read-only mapping whose "selection" may be missing or empty on first draw.
    """
    selection = event.get("selection") if event else None
    points = selection.get("points") if selection else None
    return [dict(p) for p in points or []]


# ---- gallery ---------------------------------------------------------------------------------
def model_channels(res: RunResults) -> int:
    """1 for a grayscale model, else 3: tiles show the image in the colours the model saw."""
    channels = res.report.preprocessing.get("channels")
    return 1 if channels == 1 else 3


@st.dialog("Sample", width="large")
def sample_dialog(run_id: str, variant: str, row: int) -> None:
    """A larger image and both top-5 lists of one sample."""
    try:
        res = cache.results(run_id)
    except QuantLensError as exc:
        st.error(str(exc))
        return
    rec = res.variant_rows(variant, [row])
    if rec.empty:
        st.warning("This sample is no longer in the run.")
        return
    r = rec.iloc[0]
    left, right = st.columns([1, 2])
    with left:
        img = cache.thumbnail(
            res.image_path(str(r["relpath"])), size=cache.LARGE_PX, channels=model_channels(res)
        )
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


CAUSE_COLORS: dict[str, Literal["violet", "orange"]] = {
    CAUSE_CONVERSION: "violet",
    CAUSE_QUANTIZATION: "orange",
}


def cause_badge(cause: str) -> None:
    """A tile's "conversion" / "quantization" badge: who caused this disagreement."""
    if cause in CAUSE_COLORS:
        st.badge(cause, color=CAUSE_COLORS[cause])


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
    # `df` may hold only the columns the page filtered and sorted by: read the shown rows whole.
    chunk = res.variant_rows(variant, df["row"].iloc[start : start + page_size].tolist())
    for offset in range(0, len(chunk), columns):
        cols = st.columns(columns)
        for col, (_, r) in zip(
            cols, chunk.iloc[offset : offset + columns].iterrows(), strict=False
        ):
            with col, st.container(border=True):
                img = cache.thumbnail(
                    res.image_path(str(r["relpath"])), channels=model_channels(res)
                )
                if img is None:
                    st.caption(":gray[image missing]")
                else:
                    st.image(img, width=cache.THUMB_PX)
                st.caption(tile_caption(res, r))
                cause_badge(str(r.get("cause") or ""))
                if st.button(
                    "Details",
                    key=f"{key}.tile.{int(r['row'])}",
                    icon=":material/zoom_in:",
                    use_container_width=True,
                ):
                    sample_dialog(res.run_id, variant, int(r["row"]))


GALLERY_FILTER_OFF = ""  # a gallery image filter's "off": disagreements with the original


def gallery_image_filter(
    label: str,
    flips: dict[str, tuple[int, ...]],
    *,
    key: str,
    describe: Callable[[str, int], str],
    help: str,
) -> tuple[str, tuple[int, ...]] | None:
    """A Disagreements filter that swaps the gallery's disagreements for one named set of
    images (a runtime's flips, a perturbation's new flips): (name, data set indices) when one
    is chosen, None when off or there is nothing to choose (the choice is not drawn then).
    `describe(name, count)` words an option."""
    if not flips:
        return None
    options = [GALLERY_FILTER_OFF, *flips]
    if st.session_state.get(key) not in options:
        st.session_state[key] = GALLERY_FILTER_OFF
    chosen = st.selectbox(
        label,
        options,
        key=key,
        format_func=lambda name: (
            "off: disagreements with the original"
            if name == GALLERY_FILTER_OFF
            else describe(name, len(flips[name]))
        ),
        help=help,
    )
    return None if chosen == GALLERY_FILTER_OFF else (str(chosen), flips[str(chosen)])
