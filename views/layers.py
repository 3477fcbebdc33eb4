"""Layers, the fix page: why a variant lost agreement (its causes, with evidence), the fixes
that apply cheapest first with a re-score button each, its graph in Model Explorer coloured by
per-op error, the per-op error along the network, the measured sensitivity and the auto-fix
path."""

import streamlit as st

from core.errors import QuantLensError
from core.jobs import launch as jobs
from core.reporting import layer_rank
from core.reporting.layer_figures import (
    activation_histogram_figure,
    autofix_path_figure,
    layer_error_figure,
)
from core.reporting.layer_rank import layer_error
from core.reporting.report import awaiting_diagnosis, chosen_step
from core.reporting.results import RunResults
from core.reporting.sections.variant import Variant
from core.types import RunStatus, VariantSpec, short_name
from ui import fmt, history, keys, runs, widgets
from ui.fix_page import fix_section
from ui.model_explorer_view import model_explorer_panel

st.title("Layers")
res = widgets.require_results()
widgets.run_header(res)
if runs.run_status(res.run_id).get("status") in (RunStatus.QUEUED, RunStatus.RUNNING):
    # A re-score (or the run itself) in flight: the Run page's live panel; the page reruns
    # with the new variant when it ends. Cancelling a re-score leaves the run as it was.
    runs.live_progress(res.run_id)
    if st.button("Cancel", icon=":material/stop:", key="layers.cancel"):
        try:
            jobs.cancel_run(res.run_id, home=history.home())
        except QuantLensError as exc:
            st.error(str(exc))
        else:
            history.invalidate()

diagnosed = [v for v in res.variants if v.extra.get("diagnosis")]
waiting = awaiting_diagnosis({"variants": [v.to_dict() for v in res.variants]})
if waiting:
    st.info(
        f"{fmt.text(', '.join(waiting))} flipped no image, so the run did not diagnose "
        f"{'it' if len(waiting) == 1 else 'them'}. The per-layer statistics take a re-open of "
        "the run (its images decoded again; every result stays as it is).",
        icon=":material/info:",
    )
    if st.button("Diagnose them too", icon=":material/troubleshoot:", key="layers.diagnose"):
        try:
            jobs.diagnose_run(res.run_id, home=history.home())
        except QuantLensError as exc:
            st.error(str(exc))
        else:
            history.invalidate()
            st.rerun()
if not diagnosed:
    st.info(
        "No per-layer diagnosis in this run. Int8 variants (both backends) and every quantizer "
        "variant are diagnosed when they finish and flipped an image; float16 and dynamic on "
        "the converter have no per-layer statistics.",
        icon=":material/info:",
    )
    st.stop()

names = [v.name for v in diagnosed]
name = st.selectbox("Variant", names, key=keys.LAYERS_VARIANT, format_func=short_name)
entry = res.variant(name)
diagnosis = entry.extra["diagnosis"]
rows = res.layer_rows(name)
ranked_by = str(diagnosis.get("ranked_by") or "rmse/scale")
st.caption(
    f"{fmt.text(diagnosis.get('source', ''))}: {diagnosis.get('calibration_images', 0)} "
    f"calibration images and {fmt.count(int(diagnosis.get('flipped_images') or 0), 'image')} "
    "this variant flipped. "
    f"Suspects are ranked by {fmt.text(ranked_by)} on the flipped images."
    + (
        f" Derived from **{fmt.text(entry.identity.parent)}** with "
        f"{fmt.text(', '.join(entry.identity.float_layers))} in float."
        if entry.identity.parent
        else ""
    )
)
fix_section(res, entry)
if rows:
    model_explorer_panel(res, entry, rows, diagnosis)

if not rows:
    st.warning(
        f"{entry.file_id}.layers.csv is missing from the run folder; only the summary is shown."
    )
else:
    suspect_orders = [int(s["order"]) for s in diagnosis.get("suspects") or []]
    st.plotly_chart(
        layer_error_figure(rows, ranked_by=ranked_by, suspects=suspect_orders),
        key="layers.depth",
    )

# The ranked table: the statistics' ranking, and the measured one when auto-fix ran.
fix = entry.extra.get("auto_fix") or {}
measured = {m["layer"]: (rank, m) for rank, m in enumerate(fix.get("sensitivity") or [], 1)}


# The diagnosis's own ranking (the table's stat_rank column, core.reporting.layer_rank), the one
# report.json's suspects and auto-fix `stat_rank` come from.
stat_rank = layer_rank.table_ranks(rows, ranked_by=ranked_by)
ranked_rows = [dict(r) for r in layer_rank.ranked_rows(rows, stat_rank)]


def _number(value: str | None) -> float | None:
    return None if value in (None, "") else float(value)


table = []
for row in ranked_rows:
    hit = measured.get(row["layer"])
    table.append(
        {
            "rank by statistics": stat_rank.get(row["order"]),
            "rank measured": hit[0] if hit else None,
            "layer": row["layer"],
            "op": row["op"],
            "order": int(row["order"]),
            f"{ranked_by} (calibration)": layer_error(row, ranked_by=ranked_by, flipped=False),
            f"{ranked_by} (flipped)": layer_error(row, ranked_by=ranked_by, flipped=True),
            "mean KL, layer in float": hit[1]["mean_kl"] if hit else None,
            "agreement %, layer in float": hit[1]["agreement_pct"] if hit else None,
            "shape": row["shape"],
            "scale": _number(row["scale"]),
            "zero point": _number(row["zero_point"]),
        }
    )
st.subheader("Ranked layers")
# Integers in a column with a gap become floats: shown without ".0", and "—" in empty cells.
whole = st.column_config.NumberColumn(format="%d")
widgets.table(
    table,
    key="layers.table",
    column_config={
        "rank by statistics": whole,
        "rank measured": whole,
        "zero point": whole,
        # Four decimals throughout: a value such as 0.2240 lost its last digit.
        f"{ranked_by} (calibration)": st.column_config.NumberColumn(format="%.4f"),
        f"{ranked_by} (flipped)": st.column_config.NumberColumn(format="%.4f"),
    },
)
st.caption(
    "Rank by statistics: the error on the flipped images (calibration when none flipped). "
    + (
        "Rank measured: each layer alone kept in float, the model re-run on "
        f"{fmt.count(int(fix.get('scan_images') or 0), 'image')}, ranked by mean "
        "KL(original ‖ model); "
        "**the auto-fix proposal uses the measured ranking.**"
        if measured
        else "Run with --auto-fix to measure each layer's effect; the statistics alone can "
        "pick layers whose float version makes agreement worse."
    )
)

steps = fix.get("steps") or []
if steps:
    st.subheader("Auto-fix path")
    st.plotly_chart(
        autofix_path_figure(
            steps,
            parent_agreement_pct=float(entry.result.top1_agreement_pct or 0.0),
            parent_size_bytes=int(entry.result.size_bytes or 0),
            threshold_pct=res.threshold_pct,
        ),
        key="layers.autofix",
    )
    chosen = chosen_step(steps)
    if chosen is None:
        st.markdown(
            f"No layer kept in float beat the parent's agreement on "
            f"{fmt.count(int(steps[0]['n']), 'image')}: no variant was derived."
        )
    else:
        verdict = "meets" if chosen["meets_threshold"] else "does not meet"
        # The path is the keep-float rung only; the search may have chosen a cheaper rung, so
        # the derived variant is named only when it is this path's end.
        derived = str(fix.get("variant") or "")
        path_end = bool(derived) and VariantSpec.parse(derived).float_layers == tuple(
            sorted(chosen["layers"])
        )
        st.markdown(
            f"**Keep in float** ({fmt.text(' + '.join(chosen['layers']))}): "
            f"{fmt.count(len(chosen['layers']), 'layer')} in float, "
            f"{chosen['agreement_pct']:.2f} % agreement on "
            f"{fmt.count(int(chosen['n']), 'image')} ({verdict} the {res.threshold_pct:g} % "
            f"bar), {fmt.mb(int(chosen['size_bytes']))} against "
            f"{fmt.mb(int(entry.result.size_bytes or 0))}."
            + (
                f" Derived as **{fmt.text(derived)}**."
                if path_end
                else f" The search chose **{fmt.text(derived)}**, a rung of the ladder above."
                if derived
                else ""
            )
        )
    st.caption(
        "Each layer in the measured order is added to the float set and kept unless agreement "
        "falls (or holds with a higher mean KL); hollow markers are layers tried and not kept."
    )
elif fix.get("error"):
    st.warning(f"Auto-fix did not run: {fix['error']}")


# -- keep layers in float and re-score, on the run's own images -------------------------------


def keras_layers(rows: list[dict[str, str]], kept: tuple[str, ...] = ()) -> list[str]:
    """The Keras layer names of the table's ops, in the order given (each once), then the layers
    `kept` in float that no row names: a derived variant's table has no row for an op it keeps
    in float (nothing of it is quantized), yet those layers are its selection. The rows an op
    names in parentheses, such as the model output, are not layers."""
    names: list[str] = []
    for row in rows:
        for name in [row["layer"], *(row.get("layers") or "").split("+")]:
            if name and not name.startswith("(") and name not in names:
                names.append(name)
    return names + [layer for layer in kept if layer not in names]


def rescore_controls(res: RunResults, entry: Variant, ranked: list[dict[str, str]]) -> None:
    """The "Keep in float" multi-select and the button that re-scores the parent with them."""
    parent = entry.identity.parent or entry.name
    st.subheader("Keep in float and re-score")
    chosen = st.multiselect(
        "Keep in float",
        keras_layers(ranked, entry.identity.float_layers),
        default=list(entry.identity.float_layers),
        # One selection per variant shown: a derived variant opens on its own float layers,
        # not on what was picked on its parent.
        key=f"{keys.LAYERS_KEEP_FLOAT}.{entry.name}",
        help="Keras layers, most suspect first. The re-score converts "
        f"{parent} again with these layers in float and evaluates it on this run's images.",
    )
    if st.button(
        "Re-score with these layers in float", icon=":material/replay:", key="layers.rescore"
    ):
        try:
            jobs.rescore_run(res.run_id, parent, chosen, home=history.home())
        except QuantLensError as exc:
            st.session_state[keys.LAYERS_RESCORE_ERROR] = str(exc)
        else:
            st.session_state.pop(keys.LAYERS_RESCORE_ERROR, None)
            st.rerun()
    error = st.session_state.get(keys.LAYERS_RESCORE_ERROR)
    if error:
        st.error(error)
    st.caption(
        f"The result is a variant derived from **{fmt.text(parent)}**, added to this run: sized, "
        "timed and diagnosed like the others, on every page, in the report and in Compare."
    )


def _metric_number(value: str | None) -> str:
    return widgets.EMPTY_CELL if value in (None, "") else f"{float(value):.6g}"


def layer_details(res: RunResults, name: str, ranked: list[dict[str, str]]) -> None:
    """One op: its scale and zero point, its weight range, its activations float vs quantized."""
    st.subheader("Layer details")
    by_order = {row["order"]: row for row in ranked}
    order = st.selectbox(
        "Layer",
        list(by_order),
        format_func=lambda o: f"{by_order[o]['layer']} ({by_order[o]['op']}, order {o})",
        key=f"{keys.LAYERS_DETAIL}.{name}",
    )
    row = by_order[order]
    details = res.layer_details(name)
    op = ((details or {}).get("ops") or {}).get(order) or {}
    low, high = op.get("weight_min"), op.get("weight_max")
    cols = st.columns(3)
    cols[0].metric("Scale (output)", _metric_number(row["scale"]))
    cols[1].metric("Zero point (output)", "—" if row["zero_point"] == "" else row["zero_point"])
    cols[2].metric(
        "Weight range",
        "—" if details is None else "no weights" if low is None else f"{low:.4g} … {high:.4g}",
        help="Minimum and maximum of the op's weights (kernels, not biases) in the variant's "
        ".tflite, in float units (int8 weights dequantized per channel).",
    )
    st.caption(
        f"Keras layers {fmt.code(row.get('layers') or row['layer'])} · output "
        f"{fmt.code(row['tensor_name'])} · shape {fmt.text(row['shape'])}"
    )
    histogram = op.get("histogram")
    if details is None:
        st.info(
            "This run has no layer details (runs diagnosed before they were added); re-score a "
            "variant to get them.",
            icon=":material/info:",
        )
    elif histogram is None:
        st.info(
            "No activation histogram for this op: the float32 model has no tensor of its name.",
            icon=":material/info:",
        )
    else:
        st.plotly_chart(
            activation_histogram_figure(
                histogram,
                layer=row["layer"],
                images=str(details["images"]),
                n_images=int(details["n_images"]),
            ),
            key="layers.histogram",
        )


if rows:
    layer_details(res, name, ranked_rows)
    rescore_controls(res, entry, ranked_rows)
