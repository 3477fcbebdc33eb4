"""Size: the original and every variant in MB, with the reduction each one buys."""

import streamlit as st

from core.reporting.figures import size_figure
from core.reporting.report import size_change_label
from ui import fmt, widgets

st.title("Model size")
res = widgets.require_results()
widgets.run_header(res)

sizes: dict[str, int] = {}
reductions: dict[str, float | None] = {}
if res.reference.get("size_bytes"):
    sizes["original"] = int(res.reference["size_bytes"])
for v in res.variants:
    if v.result.size_bytes:
        sizes[v.name] = int(v.result.size_bytes)
        reductions[v.name] = v.result.size_reduction_pct
if not sizes:
    st.info("No sizes yet: no variant has been converted.")
    st.stop()
st.plotly_chart(size_figure(sizes, reductions_pct=reductions), key="size.chart")


def _change(reduction_pct: float | None) -> str:
    return "—" if reduction_pct is None else size_change_label(reduction_pct)


rows = [
    {
        "model": name,
        "size": fmt.mb(b),
        "bytes": b,
        "change vs original": _change(reductions.get(name)) if name != "original" else "—",
        "change vs float32 TFLite": _change(res.variant(name).result.size_reduction_vs_float32_pct)
        if name != "original"
        else "—",
    }
    for name, b in sizes.items()
]
widgets.table(rows, key="size.table")
st.caption(
    "Original: the .keras file or the SavedModel folder's total bytes; variants: the "
    ".tflite file. MB = 10⁶ bytes. Changes are signed: −75.0 % is smaller, +5.0 % larger."
)
