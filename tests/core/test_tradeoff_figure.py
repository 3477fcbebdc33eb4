"""core.reporting.figures.tradeoff_figure: points in chart units, the frontier line, the ringed pick, units
on every axis and the colour bar, and the card numbers on hover."""

from __future__ import annotations

from core.reporting.figures import PICK_MARKER_PX, label_positions, tradeoff_figure
from core.reporting.recommend import TradeoffPoint

POINTS = [
    TradeoffPoint("float32", 4.0, 2.0, 100.0, (99.2, 100.0), 500, "PASS"),
    TradeoffPoint("int8_q", 1.1, 1.2, 97.0, (95.1, 98.2), 500, "PASS"),
    TradeoffPoint("int8", 1.0, 1.0, 98.0, (96.4, 98.9), 500, "PASS"),
]


def test_points_sit_at_size_and_p50_coloured_by_agreement() -> None:
    fig = tradeoff_figure(POINTS, frontier=["int8", "float32"], pick="int8")
    points = fig.data[0]
    assert list(points.x) == [4.0, 1.1, 1.0]
    assert list(points.y) == [2.0, 1.2, 1.0]
    assert list(points.marker.color) == [100.0, 97.0, 98.0]
    assert list(points.text) == ["float32", "int8_q", "int8"]
    assert points.marker.colorbar.title.text == "top-1 agreement (%)"


def test_axes_carry_units() -> None:
    fig = tradeoff_figure(POINTS, frontier=[], pick=None)
    assert fig.layout.xaxis.title.text == "size (MB)"
    assert fig.layout.yaxis.title.text == "p50 latency (ms)"


def test_frontier_joins_its_points_in_the_given_order_and_the_pick_is_ringed() -> None:
    fig = tradeoff_figure(POINTS, frontier=["int8", "float32"], pick="int8")
    frontier = next(t for t in fig.data if t.name == "Pareto frontier")
    assert list(frontier.x) == [1.0, 4.0]
    assert list(frontier.y) == [1.0, 2.0]
    pick = next(t for t in fig.data if str(t.name).startswith("recommended"))
    assert pick.name == "recommended: int8"
    assert (list(pick.x), list(pick.y)) == ([1.0], [1.0])


def test_no_pick_draws_no_ring() -> None:
    fig = tradeoff_figure(POINTS, frontier=["int8"], pick=None)
    assert not any(str(t.name).startswith("recommended") for t in fig.data)


def test_hover_shows_the_card_numbers() -> None:
    fig = tradeoff_figure(POINTS, frontier=[], pick=None)
    points = fig.data[0]
    row = list(points.customdata[2])
    assert row == [1.0, 1.0, 98.0, "96.4–98.9 %", "500", "PASS"]
    template = points.hovertemplate
    for piece in ("MB", "ms", "95 % CI", "n=", "verdict"):
        assert piece in template


def test_the_colour_range_stays_within_0_and_100_when_every_variant_agrees_fully() -> None:
    full = [
        TradeoffPoint("float16", 2.0, 1.0, 100.0, (99.2, 100.0), 500, "PASS"),
        TradeoffPoint("int8", 1.0, 0.8, 100.0, (99.2, 100.0), 500, "PASS"),
    ]
    marker = tradeoff_figure(full, frontier=[], pick=None).data[0].marker
    assert (marker.cmin, marker.cmax) == (99.0, 100.0)  # not Plotly's 99.6-100.4
    marker = tradeoff_figure(POINTS, frontier=[], pick=None).data[0].marker
    assert (marker.cmin, marker.cmax) == (97.0, 100.0)


def test_names_of_close_points_go_above_and_below_and_a_lone_one_above() -> None:
    """The demo's float16 and dynamic sit 4 KB and 0.5 µs apart: their names ran into one."""
    demo = [
        TradeoffPoint("float32", 0.058, 0.0250, 100.0, (99.3, 100.0), 528, "PASS"),
        TradeoffPoint("dynamic", 0.035, 0.0250, 100.0, (99.3, 100.0), 528, "PASS"),
        TradeoffPoint("float16", 0.039, 0.0246, 100.0, (99.3, 100.0), 528, "PASS"),
        TradeoffPoint("int8", 0.033, 0.0190, 99.8, (98.9, 100.0), 528, "PASS"),
    ]
    positions = label_positions(demo, pick="int8")
    assert positions[0] == "top center"  # float32: nothing near it
    assert {positions[1], positions[2]} == {"top center", "bottom center"}
    assert label_positions(POINTS[:1], pick=None) == ["top center"]
    assert label_positions([], pick=None) == []


def test_the_picks_marker_fills_its_ring_so_its_name_sits_outside() -> None:
    fig = tradeoff_figure(POINTS, frontier=[], pick="int8")
    assert list(fig.data[0].marker.size) == [14, 14, PICK_MARKER_PX]
    ring = next(t for t in fig.data if str(t.name).startswith("recommended"))
    assert ring.marker.size >= PICK_MARKER_PX
