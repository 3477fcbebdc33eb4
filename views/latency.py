"""Latency: per-invoke time distributions and percentiles for the original and each variant."""

import numpy as np
import streamlit as st

from core.metrics.latency import MAX_BUDGETED_RUNS, MIN_BUDGETED_RUNS, P99_MIN_RUNS, quotable_p99
from core.reporting.figures import (
    ORIGINAL_LABEL,
    latency_distribution_figure,
    latency_percentiles_figure,
)
from core.reporting.speedup import speedup_cells, speedup_lines
from ui import fmt, keys, widgets

st.title("Latency")
res = widgets.require_results()
widgets.run_header(res)

arrays: dict[str, np.ndarray] = {}
percentiles: dict[str, dict[str, float | None]] = {}
ref_arr = res.latency("reference")
if ref_arr is not None and ref_arr.size:
    arrays[ORIGINAL_LABEL] = ref_arr
if res.reference.get("latency_ms"):
    percentiles[ORIGINAL_LABEL] = dict(res.reference["latency_ms"])
for name in res.variant_names(finished_only=True):
    arr = res.latency(name)
    if arr is not None and arr.size:
        arrays[name] = arr
    lat = res.variant(name).result.latency_ms
    if lat:
        percentiles[name] = dict(lat)

if not arrays and not percentiles:
    st.info("No latency measurements yet.")
    st.stop()

log_y = st.toggle(
    "Log scale",
    value=True,
    key=keys.LATENCY_LOG,
    help="The original is often 10× slower; a log axis keeps every model readable.",
)
left, right = st.columns(2)
with left:
    if arrays:
        st.plotly_chart(
            latency_distribution_figure(arrays, log_y=log_y), key="latency.distribution"
        )
    else:
        st.info("Per-invoke samples were not saved for this run; percentiles only.")
with right:
    st.plotly_chart(latency_percentiles_figure(percentiles, log_y=log_y), key="latency.percentiles")

rows = []
for name, p in percentiles.items():
    speed = (
        None
        if name == ORIGINAL_LABEL
        else speedup_lines(
            name, res.variant(name).result.speedup, res.variant(name).result.speedup_vs_reference
        )
    )
    cells = (
        ("—", "—")
        if name == ORIGINAL_LABEL
        else speedup_cells(name, res.variant(name).result.speedup)
    )
    rows.append(
        {
            "model": name,
            "n": p.get("n"),
            "min (ms)": p.get("min"),
            "p50 (ms)": p.get("p50"),
            "p90 (ms)": p.get("p90"),
            "p99 (ms)": quotable_p99(p),  # None under 100 runs: max is the honest tail
            "max (ms)": p.get("max"),
            "mean (ms)": p.get("mean"),
            "std (ms)": p.get("std"),
            "speed-up vs float32 TFLite": cells[0],
            "second: vs the TensorFlow original": cells[1],
            "stability": (speed.unstable if speed else None) or "—",
        }
    )
widgets.table(
    rows,
    key="latency.table",
    column_config={
        c: st.column_config.NumberColumn(format="%.3f")
        for c in (
            "min (ms)",
            "p50 (ms)",
            "p90 (ms)",
            "p99 (ms)",
            "max (ms)",
            "mean (ms)",
            "std (ms)",
        )
    },
)
warnings = {
    ORIGINAL_LABEL: res.reference.get("latency_warning"),
    **{n: res.variant(n).result.latency_warning for n in res.variant_names(finished_only=True)},
}
for name, warning in warnings.items():
    if warning:
        st.warning(f"**{fmt.text(name)}**: {fmt.text(warning)}", icon=":material/speed:")
env, opts = res.environment, res.options
runs = (
    f"{opts['latency_runs']} timed runs per model"
    if opts.get("latency_runs")
    else f"each model timed for {opts.get('latency_budget_s', '?')} s "
    f" ({MIN_BUDGETED_RUNS} to {MAX_BUDGETED_RUNS} runs, n above)"
)
st.caption(
    "Speed-up compares each variant's LiteRT invoke with float32 TFLite on the same runtime; "
    "the TensorFlow original's serving call comes second. The models are timed in interleaved "
    "blocks (A B A B …); a speed-up is the median over blocks of the ratio of block medians, "
    "with the range over blocks. "
    f"Batch 1, same input, after {opts.get('warmup_runs', '?')} warm-up runs; {runs}; "
    f"p99 is shown from {P99_MIN_RUNS} runs, below that only max; "
    f"threads {env.get('threads', opts.get('threads', '?'))}"
    + (
        f" on {env['usable_cpus']} usable CPUs (host: {env.get('cpu_count', '?')}). "
        if env.get("usable_cpus")
        else ". "
    )
    + f"TensorFlow {env.get('tensorflow', '?')} · LiteRT {env.get('litert', '?')} · "
    f"Keras {env.get('keras', '?')} · Python {env.get('python', '?')} · "
    f"CPU {fmt.text(env.get('cpu', '?'))}. The original runs through its serving signature."
)
