"""Size: the original and every variant in MB, with the reduction each one buys."""

import streamlit as st

from core.figures import size_figure
from ui import fmt, widgets

st.title("Model size")
res = widgets.require_results()
widgets.run_header(res)

sizes: dict[str, int] = {}
reductions: dict[str, float | None] = {}
if res.reference.get("size_bytes"):
    sizes["original"] = int(res.reference["size_bytes"])
for v in res.variants:
    if v.get("size_bytes"):
        name = str(v.get("name") or v.get("mode"))
        sizes[name] = int(v["size_bytes"])
        reductions[name] = v.get("size_reduction_pct")
if not sizes:
    st.info("No sizes yet: no variant has been converted.")
    st.stop()
st.plotly_chart(size_figure(sizes, reductions_pct=reductions), key="size.chart")
rows = [
    {
        "model": name,
        "size": fmt.mb(b),
        "bytes": b,
        "reduction vs original": fmt.pct(reductions.get(name)) if name != "original" else "—",
        "reduction vs float32 TFLite": fmt.pct(
            res.variant(name).get("size_reduction_vs_float32_pct")
        )
        if name != "original"
        else "—",
    }
    for name, b in sizes.items()
]
st.dataframe(rows, hide_index=True, key="size.table")
st.caption(
    "Original: the .keras file or the SavedModel folder's total bytes; variants: the "
    ".tflite file. MB = 10⁶ bytes."
)
