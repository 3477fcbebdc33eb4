"""Figure builders: the traces carry the numbers they were given, and every axis has a unit."""

from __future__ import annotations

import numpy as np
import pytest

from core.reporting import figures


def test_size_figure_bars_in_mb_with_reduction_labels() -> None:
    fig = figures.size_figure(
        {"original": 2_500_000, "int8": 640_000}, reductions_pct={"int8": 74.4}
    )
    bar = fig.data[0]
    assert list(bar.x) == ["original", "int8"]
    assert list(bar.y) == pytest.approx([2.5, 0.64])
    assert "−74.4 %" in bar.text[1] and "%" not in bar.text[0]
    assert list(bar.marker.color) == [figures.ORIGINAL_COLOR, figures.TFLITE_COLOR]
    assert fig.layout.yaxis.title.text == "size (MB)"


def test_agreement_figure_asymmetric_error_bars_and_threshold() -> None:
    fig = figures.agreement_figure(
        ["float16", "int8"],
        [100.0, 90.0],
        [(97.0, 100.0), (80.0, 95.5)],
        threshold_pct=95.0,
        n=[40, 40],
    )
    bar = fig.data[0]
    assert list(bar.y) == [100.0, 90.0]
    assert list(bar.error_y.array) == pytest.approx([0.0, 5.5])
    assert list(bar.error_y.arrayminus) == pytest.approx([3.0, 10.0])
    # the failing variant is drawn in the fail colour
    assert list(bar.marker.color) == [figures.TFLITE_COLOR, figures.FAIL_COLOR]
    assert fig.layout.shapes[0].y0 == 95.0
    assert fig.layout.yaxis.title.text == "agreement (%)"


def test_flip_matrix_figure_blanks_zeros_and_keeps_class_names() -> None:
    m = [[0, 2, 0], [0, 0, 0], [1, 0, 0]]
    fig = figures.flip_matrix_figure(m, ["cat", "dog", "cow"])
    hm = fig.data[0]
    assert list(hm.x) == ["cat", "dog", "cow"] and list(hm.y) == ["cat", "dog", "cow"]
    z = np.asarray(hm.z, dtype=float)
    assert z[0, 1] == 2 and z[2, 0] == 1 and np.isnan(z[0, 0])
    assert list(hm.customdata[2][0]) == [2, 0]
    assert "TFLite" in fig.layout.xaxis.title.text and "original" in fig.layout.yaxis.title.text


def test_delta_histogram_counts_match_numpy_and_bins_are_shared() -> None:
    a = np.array([0.0, 0.01, 0.02, 0.5])
    b = np.array([0.1, 0.2])
    fig = figures.delta_histogram_figure({"float16": a, "int8": b}, metric="max_abs_delta", bins=5)
    assert len(fig.data) == 2
    expected, edges = np.histogram(a, bins=5, range=(0.0, 0.5))
    assert list(fig.data[0].y) == list(expected)
    assert sum(fig.data[1].y) == 2
    assert np.asarray(fig.data[1].customdata)[0, 0] == pytest.approx(edges[0])
    assert fig.layout.xaxis2.title.text == "max |Δp| (probability)"
    assert fig.layout.yaxis.title.text == "samples"


def test_latency_figures_use_ms_and_fixed_colours() -> None:
    lat = {"original": np.array([3.0, 4.0, 5.0]), "int8": np.array([1.0, 1.5])}
    box = figures.latency_distribution_figure(lat)
    assert [t.name for t in box.data] == ["original", "int8"]
    assert list(box.data[1].y) == [1.0, 1.5]
    assert box.data[0].marker.color == figures.ORIGINAL_COLOR
    assert box.layout.yaxis.title.text == "latency (ms)"
    pct = figures.latency_percentiles_figure(
        {
            "original": {"p50": 4.0, "p90": 4.8, "p99": 5.0, "max": 5.5, "n": 100},
            "int8": {"p50": 1.2, "p90": 1.4, "p99": 1.5, "max": 1.9, "n": 50},
        }
    )
    assert [t.name for t in pct.data] == ["p50", "p90", "tail"]
    # 100 runs quote p99; 50 runs quote their max, and the bar says so.
    assert list(pct.data[2].y) == [5.0, 1.9]
    assert list(pct.data[2].text) == ["p99", "max"]
    assert pct.layout.yaxis.title.text == "latency (ms)"


def test_log_latency_axes_label_every_decade() -> None:
    lat = {"original": np.array([3.1, 7.7, 12.0]), "int8": np.array([0.3, 0.31])}
    box = figures.latency_distribution_figure(lat, log_y=True)
    assert box.layout.yaxis.type == "log"
    assert list(box.layout.yaxis.tickvals) == pytest.approx([0.1, 1.0, 10.0, 100.0])
    assert list(box.layout.yaxis.ticktext) == ["0.1", "1", "10", "100"]
    # The axis shows every labelled decade, not only the data's span (log10 units).
    assert list(box.layout.yaxis.range) == pytest.approx([-1.0, 2.0])
    pct = figures.latency_percentiles_figure(
        {"original": {"p50": 0.04, "p90": 0.05, "p99": 0.06, "n": 200}, "x": {"p50": 1500.0}},
        log_y=True,
    )
    assert list(pct.layout.yaxis.ticktext) == ["0.01", "0.1", "1", "10", "100", "1,000", "10,000"]


def test_decades_of_a_single_value_still_span_one_decade() -> None:
    assert figures.decade_ticks([1.0]) == ([1.0, 10.0], ["1", "10"])
    assert figures.decade_ticks([None, 0.0]) == ([], [])


def test_topk_figure_orders_by_probability() -> None:
    ref = np.array([0.1, 0.6, 0.3])
    tfl = np.array([0.5, 0.2, 0.3])
    fig = figures.topk_figure(ref, tfl, ["a", "b", "c"], k=2)
    assert list(fig.data[0].y) == ["b", "c"]
    assert list(fig.data[1].y) == ["a", "c"]
    assert list(fig.data[1].x) == pytest.approx([0.5, 0.3])
    assert fig.layout.xaxis.title.text == "probability"


def test_accuracy_figure_groups_original_and_tflite() -> None:
    fig = figures.accuracy_figure(["float16", "int8"], 91.0, [91.0, 88.5])
    assert [t.name for t in fig.data] == ["original", "TFLite"]
    assert list(fig.data[1].y) == [91.0, 88.5]
    assert fig.layout.yaxis.title.text == "accuracy (%)"


def test_a_selected_delta_bar_holds_the_samples_it_counted() -> None:
    # Four bars over [0, 1]: [0, .25) [.25, .5) [.5, .75) [.75, 1]; worked out by hand.
    a = np.array([0.0, 0.25, 0.3, 0.5, 1.0, np.nan])
    b = np.array([0.74, 0.75])
    deltas = {"float16": a, "int8": b}
    assert figures.delta_range(deltas) == (0.0, 1.0)
    mask = figures.delta_bar_mask
    assert mask(a, 0.25, 0.5, deltas=deltas).tolist() == [0, 1, 1, 0, 0, 0]
    assert mask(a, 0.75, 1.0, deltas=deltas).tolist() == [0, 0, 0, 0, 1, 0]  # right edge in
    assert mask(b, 0.5, 0.75, deltas=deltas).tolist() == [1, 0]  # an inner edge is not
    # Every bar of the figure, for every variant: the selection is exactly the bar's height.
    fig = figures.delta_histogram_figure(deltas, metric="max_abs_delta", bins=4)
    for trace, values in zip(fig.data, deltas.values(), strict=True):
        for (lo, hi), count in zip(np.asarray(trace.customdata), trace.y, strict=True):
            assert int(mask(values, float(lo), float(hi), deltas=deltas).sum()) == count


def test_an_infinite_delta_does_not_hide_the_top_of_the_last_bar() -> None:
    # The figure bins finite values only; +inf must not make the top sample fall out of the
    # last bar's selection (the bar would say 2 samples and the gallery show 1).
    deltas = {"int8": np.array([0.1, 0.5, np.inf])}
    fig = figures.delta_histogram_figure(deltas, metric="max_abs_delta", bins=2)
    lo, hi = np.asarray(fig.data[0].customdata)[-1]
    assert list(fig.data[0].y) == [1, 1]
    assert figures.delta_bar_mask(deltas["int8"], lo, hi, deltas=deltas).tolist() == [0, 1, 0]


def test_a_single_valued_delta_column_is_one_selectable_bar() -> None:
    deltas = {"float16": np.array([0.0, 0.0, 0.0])}
    fig = figures.delta_histogram_figure(deltas, metric="max_abs_delta", bins=3)
    (lo, hi), *_ = np.asarray(fig.data[0].customdata)
    assert fig.data[0].y[0] == 3
    assert figures.delta_bar_mask(deltas["float16"], lo, hi, deltas=deltas).all()


def test_autofix_path_draws_kept_steps_as_the_path_and_the_rest_as_tried() -> None:
    from core.reporting.layer_figures import autofix_path_figure

    steps = [
        {"layers": ["a"], "agreement_pct": 98.5, "size_bytes": 1_100_000, "kept": True},
        {"layers": ["a", "b"], "agreement_pct": 98.0, "size_bytes": 1_200_000, "kept": False},
        {"layers": ["a", "c"], "agreement_pct": 99.1, "size_bytes": 1_250_000, "kept": True},
    ]
    fig = autofix_path_figure(
        steps, parent_agreement_pct=98.0, parent_size_bytes=1_000_000, threshold_pct=99.0
    )
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["top-1 agreement"].x) == [0, 1, 2]
    assert list(by_name["top-1 agreement"].y) == [98.0, 98.5, 99.1]
    assert list(by_name["size"].y) == [1.0, 1.1, 1.25]  # MB
    assert list(by_name["tried, not kept"].x) == [2]
    assert list(by_name["tried, not kept"].text) == ["a + b"]


def test_a_sampled_activation_histogram_says_how_many_values_it_counts_of_how_many() -> None:
    from core.reporting.layer_figures import activation_histogram_figure

    histogram = {
        "edges": [0.0, 1.0, 2.0],
        "float": [60_000, 40_000],
        "quantized": [70_000, 30_000],
        "values": 100_000,
        "tensor_values": 40_140_800,  # 50 images x 112 x 112 x 64
    }
    fig = activation_histogram_figure(histogram, layer="conv1", images="calibration", n_images=50)
    assert fig.layout.title.text == (
        "conv1: output activations on 50 calibration images "
        "(n = 100,000 values sampled from 40,140,800 per model)"
    )
    whole = {**histogram, "tensor_values": 100_000}
    fig = activation_histogram_figure(whole, layer="conv1", images="flipped", n_images=1)
    assert fig.layout.title.text.endswith("on 1 flipped image (n = 100,000 values per model)")


def test_the_error_along_the_network_reads_tiny_cosine_errors_in_exponent_ticks() -> None:
    """A float16 variant's 1 - cosine is about 1e-7; plotly's default SI ticks read "400n"."""
    from core.reporting.layer_figures import layer_error_figure

    rows = [
        {"order": str(i), "layer": f"conv{i}", "op": "CONV_2D", "cosine": str(1 - e)}
        for i, e in enumerate([2e-7, 4e-7, 1e-7])
    ]
    fig = layer_error_figure(rows, ranked_by="1 - cosine", suspects=[1])
    assert fig.layout.yaxis.exponentformat == "e"
    assert fig.layout.yaxis.title.text == "1 − cosine similarity"
    assert list(fig.data[0].y) == pytest.approx([2e-7, 4e-7, 1e-7], rel=1e-6)


def test_log_latency_axes_keep_their_minor_ticks_off_the_decade_labels() -> None:
    import numpy as np

    from core.reporting.figures import latency_distribution_figure, latency_percentiles_figure

    times = {"original": np.array([0.15, 0.2, 0.4]), "int8": np.array([0.002, 0.003])}
    stats = {"original": {"p50": 0.17, "p90": 0.4, "max": 0.5, "n": 3}}
    for fig in (
        latency_distribution_figure(times, log_y=True),
        latency_percentiles_figure(stats, log_y=True),
    ):
        axis = fig.layout.yaxis
        assert axis.type == "log"
        assert axis.minor.ticks == "inside"  # outside, they covered the labels
        assert axis.automargin is True
