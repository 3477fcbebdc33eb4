"""Pure plotly figure builders for the dashboard: plain numbers in, a `go.Figure` out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from core.metrics.latency import tail_latency
from core.reporting.recommend import TradeoffPoint
from core.reporting.report import size_change_label
from core.reporting.sections.flips import FlipMatrix

# One colour per side of the comparison, used by every chart so a reader learns it once.
ORIGINAL_COLOR = "#2F5D8A"  # the reference TensorFlow model
TFLITE_COLOR = "#E07A1F"  # any converted TFLite variant
PASS_COLOR = "#1E8E3E"
FAIL_COLOR = "#C62828"
GRID_COLOR = "#E6E8EB"
ORIGINAL_LABEL = "original"

_FONT = {"family": "Inter, Segoe UI, Helvetica, Arial, sans-serif", "size": 13}


def _layout(fig: go.Figure, *, title: str, x_title: str, y_title: str, height: int) -> go.Figure:
    """Shared look: white background, light grid, titles with units, compact margins."""
    fig.update_layout(
        title={"text": title, "x": 0.0, "xanchor": "left", "font": {"size": 16}},
        font=_FONT,
        plot_bgcolor="white",
        paper_bgcolor="white",
        height=height,
        margin={"l": 60, "r": 20, "t": 60, "b": 60},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "right", "x": 1},
    )
    fig.update_xaxes(title_text=x_title, gridcolor=GRID_COLOR, zeroline=False)
    fig.update_yaxes(title_text=y_title, gridcolor=GRID_COLOR, zeroline=False)
    return fig


def model_color(name: str) -> str:
    """The fixed colour of a model: the original has one, every TFLite variant shares another."""
    return ORIGINAL_COLOR if name == ORIGINAL_LABEL else TFLITE_COLOR


def size_figure(
    sizes_bytes: Mapping[str, int],
    *,
    reductions_pct: Mapping[str, float | None] | None = None,
    height: int = 380,
) -> go.Figure:
    """Bar chart of model sizes in MB; `sizes_bytes` holds "original" first, then each variant.

    Args:
        sizes_bytes: model name -> size in bytes, in display order.
        reductions_pct: variant name -> size reduction vs the original in %, shown as bar labels
            with the sign of the change ("−86.1 %" smaller, "+5.0 %" larger).
        height: figure height in pixels.

    Returns:
        A figure with one bar trace; x = model names, y = sizes in MB (10^6 bytes).
    """
    names = list(sizes_bytes)
    mb = [sizes_bytes[n] / 1e6 for n in names]
    reductions = reductions_pct or {}
    labels = []
    for n, v in zip(names, mb, strict=True):
        red = reductions.get(n)
        labels.append(f"{v:.2f} MB" if red is None else f"{v:.2f} MB<br>{size_change_label(red)}")
    fig = go.Figure(
        go.Bar(
            x=names,
            y=mb,
            text=labels,
            textposition="outside",
            cliponaxis=False,
            marker_color=[model_color(n) for n in names],
            hovertemplate="%{x}: %{y:.3f} MB<extra></extra>",
        )
    )
    _layout(fig, title="Model size", x_title="model", y_title="size (MB)", height=height)
    fig.update_yaxes(rangemode="tozero")
    fig.update_layout(showlegend=False)
    return fig


def agreement_figure(
    names: Sequence[str],
    agreement_pct: Sequence[float | None],
    ci95: Sequence[tuple[float, float] | None],
    *,
    threshold_pct: float,
    n: Sequence[int | None] | None = None,
    height: int = 380,
) -> go.Figure:
    """Top-1 agreement per variant with its 95 % Wilson interval as asymmetric error bars.

    Args:
        names: variant names.
        agreement_pct: top-1 agreement in % (None for a variant that did not finish).
        ci95: (low, high) bounds in % per variant.
        threshold_pct: the pass threshold, drawn as a dashed line.
        n: sample count per variant, shown on hover.
        height: figure height in pixels.
    """
    ys = [np.nan if a is None else a for a in agreement_pct]
    plus = [
        np.nan if c is None or a is None else c[1] - a
        for a, c in zip(agreement_pct, ci95, strict=True)
    ]
    minus = [
        np.nan if c is None or a is None else a - c[0]
        for a, c in zip(agreement_pct, ci95, strict=True)
    ]
    counts = list(n) if n is not None else [None] * len(names)
    colors = [
        FAIL_COLOR if (a is not None and a < threshold_pct) else TFLITE_COLOR for a in agreement_pct
    ]
    fig = go.Figure(
        go.Bar(
            x=list(names),
            y=ys,
            name="top-1 agreement",
            marker_color=colors,
            error_y={"type": "data", "symmetric": False, "array": plus, "arrayminus": minus},
            customdata=[[c] for c in counts],
            hovertemplate="%{x}: %{y:.2f} % (n=%{customdata[0]})<extra></extra>",
        )
    )
    # The line is named in the title, not by a label on the plot, which landed on a bar.
    fig.add_hline(y=threshold_pct, line_dash="dash", line_color=FAIL_COLOR)
    finite = [v for v in ys if not np.isnan(v)] + [threshold_pct]
    low = max(0.0, min(finite) - 5.0)
    _layout(
        fig,
        title=f"Top-1 agreement with the original (95 % CI){_threshold_line(threshold_pct)}",
        x_title="variant",
        y_title="agreement (%)",
        height=height,
    )
    fig.update_yaxes(range=[low, 100.5])
    fig.update_layout(showlegend=False)
    return fig


def _threshold_line(threshold_pct: float) -> str:
    """The title's second line naming the dashed line: a plotly title does not wrap, and on one
    line a half-width chart cut it off."""
    return f"<br><sup>dashed: threshold {threshold_pct:g} %</sup>"


def accuracy_figure(
    names: Sequence[str],
    reference_accuracy_pct: float | None,
    tflite_accuracy_pct: Sequence[float | None],
    *,
    height: int = 360,
) -> go.Figure:
    """Grouped bars: accuracy against the labels of the original and of each variant, in %."""
    ref = [reference_accuracy_pct for _ in names]
    fig = go.Figure(
        [
            go.Bar(
                x=list(names),
                y=[np.nan if v is None else v for v in ref],
                name=ORIGINAL_LABEL,
                marker_color=ORIGINAL_COLOR,
                hovertemplate="original: %{y:.2f} %<extra></extra>",
            ),
            go.Bar(
                x=list(names),
                y=[np.nan if v is None else v for v in tflite_accuracy_pct],
                name="TFLite",
                marker_color=TFLITE_COLOR,
                hovertemplate="%{x}: %{y:.2f} %<extra></extra>",
            ),
        ]
    )
    _layout(
        fig,
        title="Accuracy against labels",
        x_title="variant",
        y_title="accuracy (%)",
        height=height,
    )
    fig.update_layout(barmode="group")
    fig.update_yaxes(range=[0, 100.5])
    return fig


def tradeoff_figure(
    points: Sequence[TradeoffPoint],
    *,
    frontier: Sequence[str],
    pick: str | None = None,
    height: int = 460,
) -> go.Figure:
    """Every finished variant as a point: size (MB) on x, p50 latency (ms) on y, agreement as colour.

    Args:
        points: the variants to draw (`core.reporting.recommend.tradeoff_points`).
        frontier: names of the points on the Pareto frontier, joined by a dashed line in the
            given order (smallest first).
        pick: the recommended variant's name, ringed and labelled, or None.
        height: figure height in pixels.

    Returns:
        A figure whose first trace holds the points; hover shows each variant's card numbers
        (size, p50, agreement with its 95 % CI and n, verdict). Both axes are linear from 0.
    """
    by_name = {p.name: p for p in points}
    agreement = [p.agreement_pct for p in points]
    # Plotly widens an empty colour range around its one value ("100.4 %" when every variant
    # agrees fully): give it a one-point range inside [0, 100] instead.
    cmax = min(100.0, max(agreement, default=100.0))
    cmin = max(0.0, min(min(agreement, default=0.0), cmax - 1.0))
    custom = [
        [
            p.size_mb,
            p.p50_ms,
            p.agreement_pct,
            "-" if p.ci95 is None else f"{p.ci95[0]:.1f}–{p.ci95[1]:.1f} %",
            "-" if p.n is None else str(p.n),
            p.verdict,
        ]
        for p in points
    ]
    fig = go.Figure(
        go.Scatter(
            x=[p.size_mb for p in points],
            y=[p.p50_ms for p in points],
            mode="markers+text",
            name="variants",
            text=[p.name for p in points],
            textposition=label_positions(points, pick=pick),
            customdata=custom,
            marker={
                # The pick's marker is as large as its ring, so that its name sits outside it.
                "size": [PICK_MARKER_PX if p.name == pick else MARKER_PX for p in points],
                "color": agreement,
                "colorscale": "Viridis",
                "cmin": cmin,
                "cmax": cmax if cmax > cmin else cmin + 1.0,
                "colorbar": {"title": {"text": "top-1 agreement (%)"}, "ticksuffix": " %"},
                "line": {"width": 1, "color": "#333333"},
            },
            hovertemplate=(
                "<b>%{text}</b><br>size %{customdata[0]:.2f} MB<br>"
                "p50 %{customdata[1]:.3f} ms<br>"
                "agreement %{customdata[2]:.2f} % (95 % CI %{customdata[3]}, n=%{customdata[4]})"
                "<br>verdict %{customdata[5]}<extra></extra>"
            ),
        )
    )
    on_frontier = [by_name[n] for n in frontier if n in by_name]
    fig.add_trace(
        go.Scatter(
            x=[p.size_mb for p in on_frontier],
            y=[p.p50_ms for p in on_frontier],
            mode="lines",
            name="Pareto frontier",
            line={"dash": "dash", "color": "#555555", "width": 1.5},
            hoverinfo="skip",
        )
    )
    _target_marks(fig, points)
    if pick in by_name:
        chosen = by_name[pick]
        fig.add_trace(
            go.Scatter(
                x=[chosen.size_mb],
                y=[chosen.p50_ms],
                mode="markers",
                name=f"recommended: {pick}",
                marker={
                    "size": PICK_MARKER_PX + 2,
                    "symbol": "circle-open",
                    "color": PASS_COLOR,
                    "line": {"width": 3},
                },
                hoverinfo="skip",
            )
        )
    _layout(
        fig,
        title="Trade-off: size, latency and agreement",
        x_title="size (MB)",
        y_title="p50 latency (ms)",
        height=height,
    )
    fig.update_xaxes(rangemode="tozero")
    fig.update_yaxes(rangemode="tozero")
    return fig


MARKER_PX = 14  # a variant's marker on the trade-off chart (diameter)
PICK_MARKER_PX = 24  # the recommended one's, inside its ring
# The trade-off chart's plot area as usually drawn (the page's width, the figure's height less
# its margins), for placing the names; a wider page only spreads the points further apart.
TRADEOFF_PLOT_PX = (600.0, 330.0)
LABEL_CHAR_PX, LABEL_HEIGHT_PX = 7.0, 14.0


def label_positions(points: Sequence[TradeoffPoint], *, pick: str | None) -> list[str]:
    """Where each point's name goes, above or below it, so that no name covers another name or
    another point: each point in turn takes the first place that is free, above first.

    Plotly places a marker's text without regard to the others; variants of nearly the same
    size and latency (float16 and dynamic often are) had their names run into one.
    """
    if not points:
        return []
    width, height = TRADEOFF_PLOT_PX
    # Both axes start at 0 and plotly pads the largest value by about 5 %.
    x_scale = width / (max(p.size_mb for p in points) * 1.05 or 1.0)
    y_scale = height / (max(p.p50_ms for p in points) * 1.05 or 1.0)
    centres = [(p.size_mb * x_scale, height - p.p50_ms * y_scale) for p in points]
    radii = [(PICK_MARKER_PX if p.name == pick else MARKER_PX) / 2 for p in points]
    markers = [(x - r, y - r, x + r, y + r) for (x, y), r in zip(centres, radii, strict=True)]
    names: list[tuple[float, ...]] = []
    positions = []
    for i, (point, (x, y), radius) in enumerate(zip(points, centres, radii, strict=True)):
        half = LABEL_CHAR_PX * len(point.name) / 2
        above = (x - half, y - radius - LABEL_HEIGHT_PX, x + half, y - radius)
        below = (x - half, y + radius, x + half, y + radius + LABEL_HEIGHT_PX)
        others = markers[:i] + markers[i + 1 :] + names
        free = [box for box in (above, below) if not any(_overlap(box, o) for o in others)]
        box = free[0] if free else above
        positions.append("top center" if box == above else "bottom center")
        names.append(box)
    return positions


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _target_marks(fig: go.Figure, points: Sequence[TradeoffPoint]) -> None:
    """Cross out the points the chosen target cannot run, and ring in orange those Vela leaves
    partly on the CPU; each hover says why."""
    blocked = [p for p in points if not p.runnable]
    flagged = [p for p in points if p.runnable and p.note]
    for chosen, name, marker in (
        (
            blocked,
            "not runnable here",
            {"symbol": "x-thin", "size": 22, "line": {"width": 3, "color": "#b00020"}},
        ),
        (
            flagged,
            "CPU fallback (Vela)",
            {"symbol": "diamond-open", "size": 24, "color": "#e07000", "line": {"width": 2}},
        ),
    ):
        if chosen:
            fig.add_trace(
                go.Scatter(
                    x=[p.size_mb for p in chosen],
                    y=[p.p50_ms for p in chosen],
                    mode="markers",
                    name=name,
                    marker=marker,
                    text=[f"{p.name}: {p.note}" for p in chosen],
                    hovertemplate="%{text}<extra></extra>",
                )
            )


# A heatmap wider than this many classes is unreadable: larger runs show their busiest classes.
FLIP_MATRIX_MAX_CLASSES = 40


def flip_matrix_figure(
    matrix: FlipMatrix | Sequence[Sequence[int]],
    class_names: Sequence[str],
    *,
    height: int | None = None,
) -> go.Figure:
    """Heatmap of disagreements: rows = original's class, columns = TFLite's class, cell = count.

    Zero cells are left blank so the few flips stand out; `customdata` holds (ref, tfl) indices
    so a selected cell maps back to classes without string parsing. Beyond
    `FLIP_MATRIX_MAX_CLASSES` classes only those in the most flips are drawn (the title says so).
    """
    flips = matrix if isinstance(matrix, FlipMatrix) else FlipMatrix.from_rows(matrix)
    shown = (
        flips.busiest_classes(FLIP_MATRIX_MAX_CLASSES)
        if flips.classes > FLIP_MATRIX_MAX_CLASSES
        else list(range(flips.classes))
    )
    m = np.asarray(flips.rows(shown), dtype=float).reshape(len(shown), len(shown))
    names = [str(x) for x in class_names]
    labels = [names[i] if i < len(names) else str(i) for i in shown]
    z = np.where(m > 0, m, np.nan)
    text = [[("" if v == 0 else str(int(v))) for v in row] for row in m]
    custom = [[[i, j] for j in shown] for i in shown]
    title = "Flip matrix (disagreeing samples only)"
    if len(shown) < flips.classes:
        title = f"Flip matrix: the {len(shown)} classes in most flips, of {flips.classes}"
    c = len(shown)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=labels,
            y=labels,
            text=text,
            texttemplate="%{text}",
            customdata=custom,
            colorscale=[[0, "#FDE9D6"], [1, TFLITE_COLOR]],
            colorbar={"title": {"text": "samples"}},
            hovertemplate="original %{y} → TFLite %{x}: %{z} samples<extra></extra>",
            xgap=1,
            ygap=1,
        )
    )
    size = height or max(360, min(900, 60 + 28 * c))
    _layout(
        fig,
        title=title,
        x_title="TFLite top-1 class",
        y_title="original top-1 class",
        height=size,
    )
    fig.update_yaxes(autorange="reversed", type="category", showgrid=False)
    fig.update_xaxes(type="category", showgrid=False)
    return fig


def histogram_bins(
    values: np.ndarray, *, bins: int = 30, lo: float | None = None, hi: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Counts and edges of `values` over [lo, hi] (the data's range when not given)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    low = float(v.min()) if lo is None and v.size else (lo or 0.0)
    high = float(v.max()) if hi is None and v.size else (hi if hi is not None else 1.0)
    if high <= low:
        high = low + 1e-6
    counts, edges = np.histogram(v, bins=bins, range=(low, high))
    return counts, edges


def delta_range(deltas: Mapping[str, np.ndarray]) -> tuple[float, float]:
    """The x range every row of `delta_histogram_figure` shares: the finite values' min and max.

    (0, 1) when there is no finite value; NaN and infinite deltas fall in no bar.
    """
    arrays = [np.asarray(v, dtype=float).ravel() for v in deltas.values()]
    allv = np.concatenate(arrays) if arrays else np.zeros(0)
    allv = allv[np.isfinite(allv)]
    lo = float(allv.min()) if allv.size else 0.0
    hi = float(allv.max()) if allv.size else 1.0
    return lo, hi


def delta_bar_mask(
    values: np.ndarray, lo: float, hi: float, *, deltas: Mapping[str, np.ndarray]
) -> np.ndarray:
    """Which of `values` fall in the bar [lo, hi] selected in `delta_histogram_figure(deltas)`.

    np.histogram's rule: a bar holds lo <= x < hi, the last bar also its right edge. The last
    bar is the one reaching the shared range's top (`delta_range`); its edge may come back
    from the browser a rounding away, hence isclose.
    """
    _, top = delta_range(deltas)
    last = hi >= top or bool(np.isclose(hi, top))
    v = np.asarray(values, dtype=float)  # NaN compares False: in no bar, as in the figure
    return (v >= lo) & ((v <= hi) if last else (v < hi))


# The per-sample probability deltas a page can show: the samples table's column, its title,
# and its short name on an axis.
DELTA_METRICS = {
    "max_abs_delta": "max |Δ probability| over classes",
    "top1_prob_delta": "Δ probability of the original's top-1 class (TFLite − original)",
}
DELTA_AXES = {"max_abs_delta": "max |Δp|", "top1_prob_delta": "Δp of the original's top-1 class"}


def delta_histogram_figure(
    deltas: Mapping[str, np.ndarray],
    *,
    metric: str,
    bins: int = 30,
    height: int | None = None,
) -> go.Figure:
    """One histogram row per variant of a per-sample probability delta, on a shared x range.

    Bars (not plotly's own histogram) so a selected bar carries its bin edges in `customdata`
    and the page can find exactly those samples. `metric` is the samples table's column, a key
    of `DELTA_METRICS`.
    """
    names = list(deltas)
    lo, hi = delta_range(deltas)
    rows = max(1, len(names))
    fig = go.Figure()
    fig.set_subplots(
        rows=rows,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08 if rows > 1 else 0,
        subplot_titles=names or None,
    )
    for i, name in enumerate(names, start=1):
        counts, edges = histogram_bins(np.asarray(deltas[name]), bins=bins, lo=lo, hi=hi)
        centers = (edges[:-1] + edges[1:]) / 2
        fig.add_trace(
            go.Bar(
                x=centers,
                y=counts,
                width=edges[1:] - edges[:-1],
                name=name,
                marker_color=TFLITE_COLOR,
                marker_line_width=0,
                customdata=np.stack([edges[:-1], edges[1:]], axis=1),
                hovertemplate=(
                    f"{name}<br>%{{customdata[0]:.4f}} … %{{customdata[1]:.4f}}"
                    "<br>%{y} samples<extra></extra>"
                ),
            ),
            row=i,
            col=1,
        )
        fig.update_yaxes(title_text="samples", row=i, col=1)
    _layout(
        fig,
        title=DELTA_METRICS.get(metric, metric),
        x_title="",
        y_title="samples",
        height=height or 140 + 170 * rows,
    )
    for i in range(1, rows + 1):
        fig.update_yaxes(title_text="samples", row=i, col=1)
    fig.update_xaxes(title_text=f"{DELTA_AXES.get(metric, metric)} (probability)", row=rows, col=1)
    fig.update_layout(showlegend=False, bargap=0.05)
    return fig


def per_class_agreement_figure(
    classes: Sequence[str],
    agreement_pct: Sequence[float],
    ci95: Sequence[tuple[float, float]],
    n: Sequence[int],
    *,
    threshold_pct: float,
    height: int = 380,
) -> go.Figure:
    """Agreement per reference class with its 95 % interval, in the order given (worst first)."""
    fig = agreement_figure(
        classes, agreement_pct, ci95, threshold_pct=threshold_pct, n=n, height=height
    )
    fig.update_layout(
        title_text=f"Agreement per class of the original (95 % CI){_threshold_line(threshold_pct)}"
    )
    fig.update_xaxes(title_text="original's top-1 class", type="category")
    return fig


def latency_distribution_figure(
    latencies_ms: Mapping[str, np.ndarray],
    *,
    log_y: bool = False,
    height: int = 420,
) -> go.Figure:
    """Box plots of per-invoke wall time per model ("original" first), in milliseconds."""
    fig = go.Figure()
    for name, values in latencies_ms.items():
        v = np.asarray(values, dtype=float)
        fig.add_trace(
            go.Box(
                y=v,
                name=name,
                marker_color=model_color(name),
                boxpoints="outliers",
                hovertemplate=f"{name}: %{{y:.3f}} ms<extra></extra>",
            )
        )
    _layout(
        fig,
        title="Per-invoke latency at batch 1",
        x_title="model",
        y_title="latency (ms, log scale)" if log_y else "latency (ms)",
        height=height,
    )
    fig.update_layout(showlegend=False)
    if log_y:
        _log_axis_with_decades(
            fig, [float(x) for v in latencies_ms.values() for x in np.asarray(v).ravel()]
        )
    else:
        fig.update_yaxes(rangemode="tozero")
    return fig


def latency_percentiles_figure(
    percentiles_ms: Mapping[str, Mapping[str, float | int | None]],
    *,
    log_y: bool = False,
    height: int = 420,
) -> go.Figure:
    """Grouped bars of p50, p90 and the quotable tail (ms) per model: one trace per statistic.

    The tail is p99 for a model timed at least 100 times and max below that (`tail_latency`),
    and each bar says which: a "p99" of 50 runs is the slowest run in disguise.
    """
    names = list(percentiles_ms)
    tails = [tail_latency(percentiles_ms[n]) for n in names]
    traces: list[tuple[str, list[str], list[float | int | None], float]] = [
        ("p50", ["p50"] * len(names), [percentiles_ms[n].get("p50") for n in names], 1.0),
        ("p90", ["p90"] * len(names), [percentiles_ms[n].get("p90") for n in names], 0.7),
        ("tail", [label for label, _ in tails], [value for _, value in tails], 0.45),
    ]
    fig = go.Figure()
    for trace, labels, ys, shade in traces:
        fig.add_trace(
            go.Bar(
                x=names,
                y=[np.nan if y is None else y for y in ys],
                name=trace,
                marker_color=[model_color(n) for n in names],
                marker_opacity=shade,
                text=labels,
                textposition="outside",
                textfont={"size": 10},
                cliponaxis=False,
                customdata=[[label] for label in labels],
                hovertemplate="%{x} %{customdata[0]}: %{y:.3f} ms<extra></extra>",
            )
        )
    _layout(
        fig,
        title="Latency: p50, p90 and p99 (max when under 100 runs)",
        x_title="model",
        y_title="latency (ms, log scale)" if log_y else "latency (ms)",
        height=height,
    )
    # Colours say original vs TFLite; the bar labels say which statistic.
    fig.update_layout(barmode="group", showlegend=False)
    if log_y:
        _log_axis_with_decades(fig, [y for _, _, ys, _ in traces for y in ys])
    return fig


def _decade_label(exponent: int) -> str:
    """10**exponent written out in milliseconds: 0.01, 0.1, 1, 10, 1,000 (never 1e+03)."""
    return f"{10.0**exponent:,.{max(0, -exponent)}f}"


def decade_ticks(values: Sequence[float | int | None]) -> tuple[list[float], list[str]]:
    """Tick values and labels at every power of ten covering the positive `values`.

    Plotly's own log ticks label 2..9 between decades ("3 4 … 9 1 2 3") and drop the decade,
    so 0.3 ms and 3 ms read the same; explicit decades cannot be misread.
    """
    positive = [float(v) for v in values if v is not None and np.isfinite(v) and v > 0]
    if not positive:
        return [], []
    low = int(np.floor(np.log10(min(positive))))
    high = int(np.ceil(np.log10(max(positive))))
    exponents = range(low, max(high, low + 1) + 1)
    return [10.0**e for e in exponents], [_decade_label(e) for e in exponents]


def _log_axis_with_decades(fig: go.Figure, values: Sequence[float | int | None]) -> None:
    tickvals, ticktext = decade_ticks(values)
    fig.update_yaxes(
        type="log",
        tickvals=tickvals or None,
        ticktext=ticktext or None,
        # From the decade below the fastest value to the one above the slowest (a log axis's
        # range is in powers of ten): fitted to the data, the axis cut off the outer decades,
        # and TFLite models at 0.02 ms sat under a lowest label of 0.1.
        range=[np.log10(tickvals[0]), np.log10(tickvals[-1])] if tickvals else None,
        # Unlabelled 2..9 marks between decades, inside the plot: outside, they were drawn
        # over the decade labels (which sit just outside the axis line).
        minor={"ticks": "inside", "ticklen": 4, "showgrid": True},
        automargin=True,
    )


def topk_figure(
    reference_probs: np.ndarray,
    tflite_probs: np.ndarray,
    class_names: Sequence[str],
    *,
    k: int = 5,
    height: int = 300,
) -> go.Figure:
    """Two horizontal bar panels: the original's and the TFLite model's top-k probabilities."""
    ref = np.asarray(reference_probs, dtype=float)
    tfl = np.asarray(tflite_probs, dtype=float)
    k = min(k, ref.shape[0])
    fig = go.Figure()
    fig.set_subplots(
        rows=1,
        cols=2,
        subplot_titles=(f"original top-{k}", f"TFLite top-{k}"),
        horizontal_spacing=0.25,
    )
    for col, (probs, color, label) in enumerate(
        ((ref, ORIGINAL_COLOR, ORIGINAL_LABEL), (tfl, TFLITE_COLOR, "TFLite")), start=1
    ):
        order = np.argsort(-np.nan_to_num(probs, nan=-1.0), kind="stable")[:k]
        fig.add_trace(
            go.Bar(
                x=probs[order],
                y=[str(class_names[i]) for i in order],
                orientation="h",
                marker_color=color,
                name=label,
                text=[f"{p:.3f}" for p in probs[order]],
                textposition="auto",
                hovertemplate="%{y}: %{x:.4f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.update_yaxes(autorange="reversed", type="category", row=1, col=col)
        fig.update_xaxes(range=[0, 1], title_text="probability", row=1, col=col)
    _layout(fig, title="", x_title="probability", y_title="", height=height)
    fig.update_layout(showlegend=False, margin={"l": 80, "r": 20, "t": 40, "b": 50})
    return fig
