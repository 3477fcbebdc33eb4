"""The top of the Layers page: per cause of a variant's loss, the cause in words with its
evidence, the ladder of fixes cheapest first with what each tried rung changed, one button per
rung that re-scores it into the run, and the flipped images a rung repairs."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.errors import QuantLensError
from core.jobs import launch as jobs
from core.jobs.rescore import RESCORE_FIXES
from core.reporting.fix_ladder import FIX_NOTE, CauseLadder, Rung, ladders, other_derived
from core.reporting.layer_figures import channel_range_figure
from core.reporting.results import RunResults
from core.reporting.sections.variant import Variant
from ui import fmt, history, keys, widgets

CAUSE_TITLE = {
    "outlier_channel": "Outlier activation channel",
    "weight_outliers": "Weight outliers",
    "clipping": "Activations clipped on the evaluated images",
    "range_collapse": "Range collapse",
    "preprocessing": "Input preprocessing mismatch",
    "runtime_only": "Error under one runtime only",
    "diffuse": "No single cause",
    "biased_error": "Biased error (channels shifted one way)",
}
# The evidence numbers shown in words (the chart shows the per-channel ranges).
EVIDENCE_LABELS = {
    "range_ratio": "largest / median channel range",
    "typical_channel_levels": "int8 levels the typical channel uses",
    "grid_fraction": "share of the grid left to the other channels",
    "scale": "scale (float units per step)",
    "zero_point": "zero point",
    "clip_rate": "share of values clipped",
    "weight_range_ratio": "largest / median output-channel weight range",
    "kurtosis": "weight kurtosis",
    "calibration_images": "calibration images",
    "evaluated_images": "evaluated images",
}
REPAIRED_PAGE = 12
COLUMNS = [3.0, 1.3, 1.0, 1.0, 1.9, 1.4]


def _signed(value: float | None, unit: str, digits: int = 2) -> str:
    if value is None:
        return widgets.EMPTY_CELL
    return f"{round(value, digits) + 0.0:+.{digits}f} {unit}"  # + 0.0: no "-0.000"


def _bytes(value: int | None) -> str:
    return widgets.EMPTY_CELL if value is None else f"{value:+,} B"


def _integer_only_badge(rung: Rung) -> None:
    if rung.integer_only is not None:
        if rung.integer_only:
            st.badge("integer-only", icon=":material/check:", color="green")
        else:
            st.badge("float ops", icon=":material/close:", color="orange")
    elif rung.integer_only_expected is not None:
        label = "integer-only (expected)" if rung.integer_only_expected else "float ops (expected)"
        st.badge(label, color="gray")


def _rescore(res: RunResults, parent: Variant, rung: Rung) -> None:
    try:
        jobs.rescore_run(
            res.run_id, parent.name, list(rung.layers), home=history.home(), fix=rung.kind
        )
    except QuantLensError as exc:
        st.session_state[keys.LAYERS_RESCORE_ERROR] = str(exc)
    else:
        st.session_state.pop(keys.LAYERS_RESCORE_ERROR, None)
        history.invalidate()
        st.rerun()


def repaired_rows(res: RunResults, parent: str, rung: str) -> pd.DataFrame:
    """The rung's rows of the images the parent flipped and the rung agrees on (the same
    samples, row for row: every variant of a run is evaluated on the run's one sample list)."""
    before = res.variant_summary(parent)
    after = res.variant_summary(rung)
    if before.empty or after.empty or "agree" not in before or "agree" not in after:
        return after.iloc[0:0]
    flipped = set(before.loc[before["agree"] == 0, "row"])
    out: pd.DataFrame = after[(after["agree"] == 1) & after["row"].isin(flipped)]
    return out


RESCORE_HELP = {
    "equalize": "Cross-layer equalize the model, quantize it as {parent} is",
    "bias_correction": "Correct the biases of {layers} against {parent}'s mean int8 error, "
    "quantize it as {parent} is",
    "int16_activations": "Quantize {parent} again with {layers} at 16-bit activations",
    "weight_only": "Quantize {parent} again with {layers} weight-only (int8 weights, float "
    "compute)",
    "keep_float": "Convert {parent} again with {layers} in float",
}


def _rung_row(
    res: RunResults, parent: Variant, rung: Rung, key: str, *, rescore: bool = True
) -> None:
    cols = st.columns(COLUMNS, vertical_alignment="center")
    layers = " + ".join(rung.layers) or widgets.EMPTY_CELL
    cols[0].markdown(f"**{fmt.text(rung.title)}** · {fmt.code(layers)}")
    cols[0].caption(fmt.text(rung.note or FIX_NOTE.get(rung.kind, "")))
    measured = rung.status in ("done", "measured")
    if measured:
        cols[1].markdown(
            f"{fmt.pct(rung.agreement_pct, digits=2)} "
            f"({_signed(rung.agreement_delta_pts, 'pts')}, n = {rung.n})"
        )
        if rung.searched:
            cols[1].caption("measured by the auto-fix search on its images")
        cols[2].markdown(_bytes(rung.bytes_delta))
        cols[3].markdown(_signed(rung.latency_delta_ms, "ms", 3))
    elif rung.status:
        cols[1].markdown(fmt.text(rung.status))
        if rung.error:
            cols[1].caption(fmt.text(rung.error))
    else:
        cols[1].markdown(":gray[not tried]")
    with cols[4]:
        _integer_only_badge(rung)
    if rung.tried:
        cols[5].caption(f"variant {fmt.code(rung.variant or '')}")
    elif rescore:
        reason = (
            None
            if rung.kind in RESCORE_FIXES and rung.name
            else "this fix cannot be re-scored in this version"
        )
        if cols[5].button(
            "Re-score",
            key=key,
            icon=":material/replay:",
            disabled=reason is not None,
            help=reason
            or RESCORE_HELP[rung.kind].format(parent=parent.name, layers=layers)
            + f" ({rung.name}) and evaluate it on this run's images; it joins the run.",
        ):
            _rescore(res, parent, rung)
    if rung.tried and rung.status == "done" and rung.variant:
        _repaired(res, parent, rung, key)


def _repaired(res: RunResults, parent: Variant, rung: Rung, key: str) -> None:
    assert rung.variant is not None
    rows = repaired_rows(res, parent.name, rung.variant)
    flipped = int(parent.result.disagreements or 0)
    if rows.empty:
        return
    if st.toggle(
        f"Show the {fmt.count(len(rows), 'image')} of the {flipped} {parent.name} flipped "
        f"that {rung.variant} repairs",
        key=f"{key}.repaired",
    ):
        widgets.gallery(
            res, rung.variant, rows, key=f"{key}.gallery", page_size=REPAIRED_PAGE, columns=6
        )


def _header() -> None:
    cols = st.columns(COLUMNS)
    for col, label in zip(
        cols,
        ["fix (layers)", "agreement (Δ vs parent)", "Δ size", "Δ latency p50", "target", ""],
        strict=True,
    ):
        col.caption(f"**{label}**")


def _evidence(ladder: CauseLadder, key: str) -> None:
    evidence = ladder.evidence
    if ladder.cause.cause == "outlier_channel" and evidence.get("channel_max_abs"):
        st.plotly_chart(
            channel_range_figure(evidence, layer=ladder.cause.layer),
            key=f"{key}.channels",
        )
    said = [
        f"{label} {_evidence_value(k, evidence[k])}"
        for k, label in EVIDENCE_LABELS.items()
        if isinstance(evidence.get(k), (int, float, str)) and not isinstance(evidence[k], bool)
    ]
    if said:
        st.caption("Evidence: " + "; ".join(said) + ".")


PERCENT_EVIDENCE = ("grid_fraction", "clip_rate")


def _evidence_value(key: str, value: float | int | str) -> str:
    if key in PERCENT_EVIDENCE and isinstance(value, (int, float)):
        return f"{100 * value:.3g} %"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def fix_section(res: RunResults, entry: Variant) -> None:
    """Causes, ladders and re-score buttons for one diagnosed variant."""
    st.subheader("Why it broke, and the fixes")
    found = ladders(entry, res.variants)
    if entry.identity.parent:
        st.caption(
            f"{fmt.text(entry.name)} is itself a fix of {fmt.text(entry.identity.parent)}; "
            "its parent's page shows the ladder."
        )
    if not found:
        st.info(
            "No cause is named for this variant in this run (causes are measured when a "
            "variant is diagnosed; runs diagnosed before that have none). The per-layer error "
            "below still shows where it breaks.",
            icon=":material/info:",
        )
    for i, ladder in enumerate(found):
        key = f"layers.fix.{entry.file_id}.{i}"
        with st.container(border=True):
            title = CAUSE_TITLE.get(ladder.cause.cause, "Cause")
            st.markdown(f"**{title}** — {fmt.text(ladder.words)}")
            _evidence(ladder, key)
            st.markdown("**Fix ladder**, cheapest first")
            _header()
            for rung in ladder.rungs:
                _rung_row(res, entry, rung, f"{key}.{rung.kind}")
    search = entry.fix_search
    if search is not None:
        st.caption(
            f"The auto-fix search measured {fmt.count(search.evaluations, 'candidate')} of a "
            f"budget of {search.budget}{' (truncated)' if search.truncated else ''} on "
            f"{fmt.count(len(search.selected_rows), 'image')} (a seeded split, seed "
            f"{search.seed}); "
            + (
                f"its pick, {fmt.text(search.chosen)}, is judged on the other "
                f"{fmt.count(len(search.held_out_rows), 'image')}, which it did not see."
                if search.chosen
                else "no fix beat the parent on those images."
            )
        )
    others = other_derived(entry, res.variants, found)
    if others:
        st.markdown(f"**Other variants derived from {fmt.text(entry.name)}**")
        _header()
        for j, rung in enumerate(others):
            _rung_row(res, entry, rung, f"layers.fix.{entry.file_id}.other{j}", rescore=False)
    error = st.session_state.get(keys.LAYERS_RESCORE_ERROR)
    if error and found:
        st.error(error)
    if found:
        st.caption(
            "Δ against the parent on the same images: agreement in percentage points, size in "
            "bytes, p50 latency per image in ms. Integer-only: every op's tensors int8/int16/"
            'int32 with no float compute, read from the variant\'s .tflite ("expected" until '
            "the rung is tried). A re-score joins this run as a derived variant, on every page."
        )
