"""The calibration sweep's summary: per size, the spread over seeds, and where the curve flattens.

Pure functions over report.json's `sweep` points (written by core.engine.stages.sweep), so the
statement the CLI, Agreement page and report.html show is decided in one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.reporting.sections.sweep_record import Sweep

# The curve has flattened at the smallest size whose mean agreement is within this many
# percentage points of the largest size's mean.
FLAT_WITHIN_PP = 0.5


def size_summary(points: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per calibration size (ascending): mean, min and max over seeds of agreement and mean KL."""
    by_size: dict[int, list[Mapping[str, Any]]] = {}
    for point in points:
        by_size.setdefault(int(point["size"]), []).append(point)
    rows = []
    for size in sorted(by_size):
        agree = [float(p["agreement_pct"]) for p in by_size[size]]
        kl = [float(p["mean_kl"]) for p in by_size[size]]
        rows.append(
            {
                "size": size,
                "seeds": len(agree),
                "agreement_mean": sum(agree) / len(agree),
                "agreement_min": min(agree),
                "agreement_max": max(agree),
                "mean_kl_mean": sum(kl) / len(kl),
                "mean_kl_min": min(kl),
                "mean_kl_max": max(kl),
            }
        )
    return rows


def flattens_at(summary: Sequence[Mapping[str, Any]]) -> int | None:
    """The smallest size from which every larger size's mean agreement stays within
    FLAT_WITHIN_PP of the largest size's.

    A size inside the band followed by one that falls out of it again is not where the curve
    flattens: the search starts after the last size outside the band.
    None with fewer than two sizes: one point shows no curve.
    """
    if len(summary) < 2:
        return None
    target = float(summary[-1]["agreement_mean"])
    flat = int(summary[-1]["size"])  # the largest is within 0 of itself
    for row in reversed(summary):
        if abs(float(row["agreement_mean"]) - target) > FLAT_WITHIN_PP:
            break
        flat = int(row["size"])
    return flat


def statement(mode: str, summary: Sequence[Mapping[str, Any]], run_size: int) -> str:
    """Where the curve of `mode` flattens, and whether the run's calibration size was enough."""
    flat = flattens_at(summary)
    if flat is None:
        return f"{mode}: one calibration size only, so no curve to read"
    last = summary[-1]
    at_flat = next(r for r in summary if r["size"] == flat)
    if flat == last["size"]:
        return (
            f"{mode}: agreement is still changing at the largest size tried (n={flat}, "
            f"{last['agreement_mean']:.2f} %); try larger calibration sets"
        )
    where = (
        f"{mode}: agreement flattens at n={flat} ({at_flat['agreement_mean']:.2f} % mean over "
        f"seeds, within {FLAT_WITHIN_PP:g} pp of {last['agreement_mean']:.2f} % at "
        f"n={last['size']})"
    )
    # Top-1 agreement saturates on easy data; the mean KL still shows whether more images help.
    first = summary[0]
    where += (
        f"; mean KL {first['mean_kl_mean']:.3g} at n={first['size']}, "
        f"{last['mean_kl_mean']:.3g} at n={last['size']}"
    )
    if run_size >= flat:
        return f"{where}; the run's {run_size} calibration images are enough"
    return f"{where}; the run's {run_size} calibration images are fewer: use at least {flat}"


def swept_modes(sweep: Sweep | None) -> dict[str, list[dict[str, Any]]]:
    """Per mode with points, its per-size summary (from the points, so it is never stale)."""
    modes = {} if sweep is None else sweep.modes
    return {mode: size_summary(entry.points) for mode, entry in modes.items() if entry.points}


def sweep_figure(sweep: Sweep) -> Any:
    """Agreement (%) and mean KL (nats) against calibration size (images, log x): the mean
    over seeds per mode, with error bars spanning the min and max seed."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from core.reporting.figures import GRID_COLOR, TFLITE_COLOR

    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("top-1 agreement (%)", "mean KL divergence (nats)"),
        horizontal_spacing=0.12,
    )
    colors = {"int8": TFLITE_COLOR, "int16x8": "#7C3AED"}
    for mode, summary in swept_modes(sweep).items():
        sizes = [row["size"] for row in summary]
        for col, key in ((1, "agreement"), (2, "mean_kl")):
            mean = [row[f"{key}_mean"] for row in summary]
            above = [row[f"{key}_max"] - row[f"{key}_mean"] for row in summary]
            below = [row[f"{key}_mean"] - row[f"{key}_min"] for row in summary]
            fig.add_trace(
                go.Scatter(
                    x=sizes,
                    y=mean,
                    mode="lines+markers",
                    name=mode,
                    legendgroup=mode,
                    showlegend=col == 1,
                    line={"color": colors.get(mode, TFLITE_COLOR)},
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": above,
                        "arrayminus": below,
                    },
                    hovertemplate=f"{mode} n=%{{x}}: %{{y:.4g}} (mean over seeds)<extra></extra>",
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(type="log", title_text="calibration images (log scale)", gridcolor=GRID_COLOR)
    fig.update_yaxes(gridcolor=GRID_COLOR, zeroline=False)
    fig.update_yaxes(title_text="agreement (%)", row=1, col=1)
    fig.update_yaxes(title_text="mean KL (nats)", row=1, col=2)
    fig.update_layout(
        title={"text": "Calibration sweep (bars: min–max over seeds)", "x": 0.0},
        plot_bgcolor="white",
        paper_bgcolor="white",
        height=380,
        margin={"l": 60, "r": 20, "t": 80, "b": 60},
    )
    return fig
