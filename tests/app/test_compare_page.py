"""Compare page: two real runs side by side; numbers equal report.json; what changed is marked."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.history.store import open_store
from tests.app.conftest import OpenPage
from tests.app.expected import interval
from tests.app.history_fixtures import reports
from ui import keys


def _ids(home: Path) -> dict[str, str]:
    with open_store(home) as store:
        return {r.name: r.id for r in store.list_runs()}


def _frame(at: AppTest, column: str) -> pd.DataFrame:
    return next(d for d in at.dataframe if column in d.value.columns).value


@pytest.mark.slow
def test_compare_shows_report_numbers_and_marks_what_changed(
    two_runs: Path, open_page: OpenPage
) -> None:
    ids = _ids(two_runs)
    items = [f"{ids['A']}/float16", f"{ids['B']}/int8"]
    at = open_page("compare", state={keys.COMPARE_ITEMS: items})
    reps = reports(two_runs)
    a, b = reps["A"]["variants"][0], reps["B"]["variants"][0]

    summary = _frame(at, "top-1 agreement (%)")
    assert list(summary["run · variant"]) == ["A · float16", "B · int8"]
    assert list(summary["top-1 agreement (%)"]) == [
        a["top1_agreement_pct"],
        b["top1_agreement_pct"],
    ]
    assert list(summary["n"]) == [a["n"], b["n"]]
    assert list(summary["95 % CI"]) == [
        interval(a["top1_agreement_ci95"]),
        interval(b["top1_agreement_ci95"]),
    ]
    assert list(summary["size (MB)"]) == pytest.approx(
        [a["size_bytes"] / 1e6, b["size_bytes"] / 1e6]
    )

    changes = _frame(at, "property").set_index("property")
    assert changes.loc["mode", "changed"] == "≠"
    assert changes.loc["calibration samples", "changed"] == "≠"
    assert changes.loc["calibration samples", "B · int8"] == "50"
    assert changes.loc["model sha256", "changed"] == ""  # same demo model
    assert changes.loc["tensorflow", "changed"] == ""
    assert changes.loc["mode", "A · float16"] == "float16"
    assert "calibration samples" in at.markdown[0].value

    charts = {str(c.proto.id).split("-")[-1] for c in at.get("plotly_chart")}
    assert len(at.get("plotly_chart")) == 4, charts  # sizes, agreement, trade-off, latency
    # The trade-off chart across runs: one point per item, at its size and p50, coloured by
    # its agreement, named "run · variant".
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    tradeoff = next(f for f in specs if "Trade-off" in f["layout"]["title"]["text"])
    points = tradeoff["data"][0]
    assert points["text"] == ["A · float16", "B · int8"]
    assert points["x"] == pytest.approx([a["size_bytes"] / 1e6, b["size_bytes"] / 1e6])
    assert points["y"] == pytest.approx([a["latency_ms"]["p50"], b["latency_ms"]["p50"]])
    assert points["marker"]["color"] == [a["top1_agreement_pct"], b["top1_agreement_pct"]]


@pytest.mark.slow
def test_only_changed_rows_toggle(two_runs: Path, open_page: OpenPage) -> None:
    ids = _ids(two_runs)
    at = open_page(
        "compare",
        state={keys.COMPARE_ITEMS: [f"{ids['A']}/float16", f"{ids['B']}/int8"]},
    )
    at.toggle(key=keys.COMPARE_ONLY_CHANGED).set_value(True).run()
    changes = _frame(at, "property")
    assert set(changes["changed"]) == {"≠"}
    assert {"mode", "calibration samples"} <= set(changes["property"])


@pytest.mark.slow
def test_one_pick_asks_for_a_second_and_deleted_runs_are_dropped(
    two_runs: Path, open_page: OpenPage
) -> None:
    ids = _ids(two_runs)
    at = open_page("compare", state={keys.COMPARE_ITEMS: [f"{ids['A']}/float16", "gone-run/int8"]})
    assert at.multiselect(key=keys.COMPARE_ITEMS).value == [f"{ids['A']}/float16"]
    assert "Pick at least two variants" in at.info[0].value


def test_empty_workspace(home: Path, open_page: OpenPage) -> None:
    at = open_page("compare")
    assert "No runs stored yet" in at.info[0].value


def _stored_fixture_run(home: Path, run_id: str, dataset: dict[str, str | None]) -> None:
    """A hand-built run registered in the store, its report's data identity set to `dataset`."""
    import json

    from tests.app.fixtures import build_run

    d = build_run(home, run_id=run_id, flips={"int8": 2}, failed_variant=None)
    report = json.loads((d / "report.json").read_text())
    report["dataset"].update(dataset)
    (d / "report.json").write_text(json.dumps(report))
    with open_store(home) as store:  # build_run registered the run; store the new identity
        store.rename_run(run_id, run_id)
        store.sync_report(run_id, report)


def test_two_csvs_in_one_folder_are_not_called_the_same_data(
    home: Path, open_page: OpenPage
) -> None:
    folder = str(home / "data")
    _stored_fixture_run(home, "run-a", {"file": f"{folder}/a.csv", "sha256": "a" * 64})
    _stored_fixture_run(home, "run-b", {"file": f"{folder}/b.csv", "sha256": "b" * 64})
    at = open_page("compare", state={keys.COMPARE_ITEMS: ["run-a/int8", "run-b/int8"]})
    changes = _frame(at, "property").set_index("property")
    assert changes.loc["data path", "changed"] == ""  # the same folder ...
    assert changes.loc["data file", "changed"] == "≠"  # ... but two CSVs
    assert changes.loc["data sha256", "changed"] == "≠"
    assert changes.loc["data file", "run-a · int8"] == f"{folder}/a.csv"
    assert "Same model, data" not in at.markdown[0].value
    assert "data file" in at.markdown[0].value and "data sha256" in at.markdown[0].value


def test_runs_without_a_data_hash_are_not_called_the_same_data(
    home: Path, open_page: OpenPage
) -> None:
    # Reports written before the hash existed: same folder, nothing else to tell them apart.
    _stored_fixture_run(home, "run-a", {"sha256": None})
    _stored_fixture_run(home, "run-b", {"sha256": None})
    at = open_page("compare", state={keys.COMPARE_ITEMS: ["run-a/int8", "run-b/int8"]})
    text = at.markdown[0].value
    assert "Same model, data" not in text
    assert "content hash is missing" in text


def test_compare_keeps_its_picks_across_page_switches_and_reloads(
    home: Path, open_page: OpenPage
) -> None:
    from tests.app.fixtures import build_run

    build_run(home, run_id="run-one", flips={"float16": 0, "int8": 3})
    build_run(home, run_id="run-two", flips={"float16": 1, "int8": 5}, seed=1)
    picks = ["run-one/int8", "run-two/float16"]
    at = open_page("compare")
    assert at.multiselect(key=keys.COMPARE_ITEMS).value != picks  # not the default already
    at.multiselect(key=keys.COMPARE_ITEMS).set_value(picks).run()
    # Away and back: Streamlit forgets the state of a widget it does not draw.
    at.switch_page("views/latency.py").run()
    at.switch_page("views/compare.py").run()
    assert not at.exception
    assert at.multiselect(key=keys.COMPARE_ITEMS).value == picks
    # A reload is a new session: the picks come back from the workspace.
    again = open_page("compare")
    assert again.multiselect(key=keys.COMPARE_ITEMS).value == picks
    # Runs deleted since are dropped, not an error.
    (home / "compare-picks.json").write_text('["gone/int8", "run-one/float16"]', encoding="utf-8")
    third = open_page("compare")
    assert third.multiselect(key=keys.COMPARE_ITEMS).value == ["run-one/float16"]
