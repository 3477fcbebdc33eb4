"""Pure plotly figures of the per-layer diagnosis and the auto-fix path (the Layers page)."""

from __future__ import annotations

import itertools
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.reporting.figures import FAIL_COLOR, ORIGINAL_COLOR, TFLITE_COLOR, _layout
from core.reporting.layer_rank import RMSE_SCALE, layer_error
from core.reporting.report import counted

SUSPICIOUS_RMSE_SCALE = 0.7  # the TF guide's rule of thumb


def _value(row: Mapping[str, Any], column: str) -> float | None:
    raw = row.get(column)
    if raw is None or raw == "":
        return None
    return float(raw)


def layer_error_figure(
    rows: Sequence[Mapping[str, Any]],
    *,
    ranked_by: str,
    suspects: Sequence[int],
    height: int = 420,
) -> go.Figure:
    """Per-op error along the network's depth, on the calibration and the flipped images.

    Args:
        rows: `<variant>.layers.csv` rows in graph order.
        ranked_by: "rmse/scale" or "1 - cosine" (the diagnosis's `ranked_by`).
        suspects: `order` values of the suspect ops, drawn as red rings.
        height: figure height in pixels.
    """
    fig = go.Figure()
    order = [int(r["order"]) for r in rows]
    hover = [f"{r['layer']} ({r['op']})<br>order {r['order']}" for r in rows]
    for flipped, label, color in (
        (False, "calibration images", ORIGINAL_COLOR),
        (True, "flipped images", TFLITE_COLOR),
    ):
        values = [layer_error(r, ranked_by=ranked_by, flipped=flipped) for r in rows]
        if all(v is None for v in values):
            continue
        fig.add_trace(
            go.Scatter(
                x=order,
                y=values,
                mode="lines+markers",
                name=label,
                line={"color": color},
                text=hover,
                hovertemplate="%{text}<br>" + ranked_by + " %{y:.3g}<extra>" + label + "</extra>",
            )
        )
    marked = [r for r in rows if int(r["order"]) in set(suspects)]
    if marked:
        flipped_known = any(_value(r, "flipped_rmse_per_scale") is not None for r in marked) or any(
            _value(r, "flipped_cosine") is not None for r in marked
        )
        fig.add_trace(
            go.Scatter(
                x=[int(r["order"]) for r in marked],
                y=[layer_error(r, ranked_by=ranked_by, flipped=flipped_known) for r in marked],
                mode="markers",
                name="suspect",
                marker={
                    "size": 16,
                    "color": "rgba(0,0,0,0)",
                    "line": {"color": FAIL_COLOR, "width": 2},
                },
                text=[f"{r['layer']} ({r['op']})" for r in marked],
                hovertemplate="suspect: %{text}<extra></extra>",
            )
        )
    if ranked_by == RMSE_SCALE:
        fig.add_hline(
            y=SUSPICIOUS_RMSE_SCALE,
            line={"dash": "dot", "color": "#888"},
            annotation_text="0.7: more than rounding explains",
        )
    # Integer ticks: an op has an order, not a position between two.
    fig.update_xaxes(tick0=0, dtick=max(1, len(rows) // 12))
    y_title = (
        "rmse / scale (quantization steps)" if ranked_by == RMSE_SCALE else "1 − cosine similarity"
    )
    fig = _layout(
        fig,
        title="Quantization error along the network",
        x_title="op order in the model (input → output)",
        y_title=y_title,
        height=height,
    )
    # 1 - cosine of a float16 variant is about 1e-7: plotly's SI ticks read "400n".
    fig.update_yaxes(exponentformat="e")
    return fig


def autofix_path_figure(
    steps: Sequence[Mapping[str, Any]],
    *,
    parent_agreement_pct: float,
    parent_size_bytes: int,
    threshold_pct: float,
    height: int = 380,
) -> go.Figure:
    """Agreement and size against the number of layers kept in float, from the parent (0) on.

    Args:
        steps: the parent's `auto_fix.steps` (layers, agreement_pct, size_bytes, kept); the kept
            ones draw the path, the others hollow markers.
        parent_agreement_pct: the parent's top-1 agreement, the path's start.
        parent_size_bytes: the parent's size, the path's start.
        threshold_pct: the agreement bar, drawn as a dashed line.
        height: figure height in pixels.
    """
    kept = [s for s in steps if s.get("kept", True)]
    tried = [s for s in steps if not s.get("kept", True)]
    counts = [0, *[len(s["layers"]) for s in kept]]
    agreement = [parent_agreement_pct, *[float(s["agreement_pct"]) for s in kept]]
    sizes = [parent_size_bytes / 1e6, *[int(s["size_bytes"]) / 1e6 for s in kept]]
    layers = ["(the parent)", *[" + ".join(s["layers"]) for s in kept]]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    if tried:
        fig.add_trace(
            go.Scatter(
                x=[len(s["layers"]) for s in tried],
                y=[float(s["agreement_pct"]) for s in tried],
                mode="markers",
                name="tried, not kept",
                marker={"color": TFLITE_COLOR, "symbol": "circle-open", "size": 9},
                text=[" + ".join(s["layers"]) for s in tried],
                hovertemplate="%{text}<br>agreement %{y:.2f} % (not kept)<extra></extra>",
            ),
            secondary_y=False,
        )
    fig.add_trace(
        go.Scatter(
            x=counts,
            y=agreement,
            mode="lines+markers",
            name="top-1 agreement",
            line={"color": TFLITE_COLOR},
            text=layers,
            hovertemplate="%{text}<br>agreement %{y:.2f} %<extra></extra>",
        ),
        secondary_y=False,
    )
    fig.add_trace(
        go.Scatter(
            x=counts,
            y=sizes,
            mode="lines+markers",
            name="size",
            line={"color": ORIGINAL_COLOR, "dash": "dash"},
            text=layers,
            hovertemplate="%{text}<br>%{y:.3f} MB<extra></extra>",
        ),
        secondary_y=True,
    )
    fig.add_hline(
        y=threshold_pct,
        line={"dash": "dot", "color": FAIL_COLOR},
        annotation_text=f"threshold {threshold_pct:g} %",
    )
    _layout(
        fig,
        title="Auto-fix path",
        x_title="layers kept in float",
        y_title="top-1 agreement (%)",
        height=height,
    )
    fig.update_yaxes(title_text="size (MB)", secondary_y=True, showgrid=False)
    fig.update_xaxes(dtick=1)
    return fig


def activation_histogram_figure(
    histogram: Mapping[str, Any],
    *,
    layer: str,
    images: str,
    n_images: int,
    height: int = 360,
) -> go.Figure:
    """The float and the quantized model's output activations of one op, overlaid on the same
    bins (core.engine.layer_details).

    Args:
        histogram: `edges` (BINS + 1), `float` and `quantized` counts, `values` counted per
            model, and `tensor_values`, every element on every image (more when sampled).
        layer: the op's layer, for the title.
        images: "flipped" or "calibration": which images were measured.
        n_images: how many.
        height: figure height in pixels.
    """
    edges = [float(e) for e in histogram["edges"]]
    centres = [(a + b) / 2 for a, b in itertools.pairwise(edges)]
    widths = [b - a for a, b in itertools.pairwise(edges)]
    fig = go.Figure()
    for key, label, color in (
        ("float", "float32 model", ORIGINAL_COLOR),
        ("quantized", "quantized model", TFLITE_COLOR),
    ):
        fig.add_trace(
            go.Bar(
                x=centres,
                y=histogram[key],
                width=widths,
                name=label,
                marker={"color": color},
                opacity=0.55,
                hovertemplate="%{x:.4g}: %{y} values<extra>" + label + "</extra>",
            )
        )
    fig.update_layout(barmode="overlay")
    fig = _layout(
        fig,
        title=(
            f"{layer}: output activations on {counted(n_images, images + ' image')} "
            f"(n = {_values_counted(histogram)} per model)"
        ),
        x_title="activation value (float units, dequantized)",
        y_title="count of values (log scale)",
        height=height,
    )
    # Log counts: a ReLU output is mostly exact zeros, which would flatten every other bar.
    fig.update_yaxes(type="log")
    return fig


def _values_counted(histogram: Mapping[str, Any]) -> str:
    """ "40,000 values", or "100,000 values sampled from 40,140,800" for a large tensor."""
    counted_values = int(histogram["values"])
    every = int(histogram.get("tensor_values") or counted_values)  # older runs: none sampled
    if every > counted_values:
        return f"{counted_values:,} values sampled from {every:,}"
    return f"{counted_values:,} values"


def channel_range_figure(
    evidence: Mapping[str, Any], *, layer: str, height: int = 340
) -> go.Figure:
    """One bar per channel: its largest |activation| on the calibration images (an outlier
    channel's cause evidence, core.engine.causes), the outliers in red, log scale so the typical
    channels stay visible beside one 1,000x taller, and a dotted line at the median channel.

    Args:
        evidence: the cause's `evidence`, with `channel_max_abs` (float units, one per channel),
            `outlier_channels`, `calibration_images` and `scale`.
        layer: the layer that writes the tensor, for the title.
        height: figure height in pixels.
    """
    values = [float(v) for v in evidence["channel_max_abs"]]
    outliers = {int(c) for c in evidence.get("outlier_channels") or []}
    live = sorted(v for v in values if v > 0)
    fig = go.Figure(
        go.Bar(
            x=list(range(len(values))),
            y=values,
            marker={
                "color": [FAIL_COLOR if c in outliers else TFLITE_COLOR for c in range(len(values))]
            },
            hovertemplate="channel %{x}: max |a| %{y:.4g}<extra></extra>",
            name="max |activation| of a channel (red: outlier)",
        )
    )
    # Reference levels as line traces (data coordinates on the log axis), named in the legend.
    ends = [-0.5, len(values) - 0.5]
    if live:
        median = statistics.median(live)
        fig.add_trace(
            go.Scatter(
                x=ends,
                y=[median, median],
                mode="lines",
                line={"dash": "dot", "color": "#555", "width": 2},
                name=f"median channel ({median:.3g})",
                hoverinfo="skip",
            )
        )
    scale = evidence.get("scale")
    if scale:
        # The int8 step the per-tensor scale gives every channel: a channel below it rounds to 0.
        fig.add_trace(
            go.Scatter(
                x=ends,
                y=[float(scale)] * 2,
                mode="lines",
                line={"dash": "dash", "color": FAIL_COLOR, "width": 2},
                name=f"one int8 step of the tensor's scale ({float(scale):.3g})",
                hoverinfo="skip",
            )
        )
    n = int(evidence.get("calibration_images") or 0)
    fig = _layout(
        fig,
        title=f"{layer}: largest |activation| per channel on {counted(n, 'calibration image')}",
        x_title="output channel (index)",
        y_title="max |activation| (float units, log scale)",
        height=height,
    )
    fig.update_yaxes(type="log")
    if live:
        low = min([live[0], float(scale or live[0])])
        high = max([live[-1], float(scale or live[-1])])
        fig.update_yaxes(range=[math.log10(low) - 0.3, math.log10(high) + 0.3])
    fig.update_xaxes(range=ends)
    return fig
