"""History page: lists stored runs, searches, opens, renames, deletes (after asking), cancels."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from core.history.store import DB_NAME, open_store
from core.inputs import rundir
from core.jobs import launch as jobs
from core.reporting.runmodel import read_report
from core.types import JobSpec, RunStatus
from tests.app.conftest import OpenPage
from tests.app.expected import pct2, shown_as_text
from tests.app.history_fixtures import reports
from ui import history, keys
from ui.downloads import per_sample_csv, report_html

NASTY = '<script>alert(1)</script> "q" \'); DROP TABLE runs;--'


def _table(at: AppTest) -> pd.DataFrame:
    return next(d for d in at.dataframe if "verdict" in d.value.columns).value


def _select(at: AppTest, names: list[str]) -> AppTest:
    """Tick the table rows of these run names (what a click on the row boxes does)."""
    df = _table(at)
    ids = list(df["id"])
    rows = [int(df.index[df["name"] == n][0]) for n in names]
    at.session_state[history.table_key(ids)] = {"selection": {"rows": rows, "columns": []}}
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _id(home: Path, name: str) -> str:
    with open_store(home) as store:
        return next(r.id for r in store.list_runs() if r.name == name)


def _button_keys(at: AppTest) -> set[str]:
    return {str(b.key) for b in at.button}


# ---- real runs (slow: the session builds the demo and two runs once) ------------------------------
@pytest.mark.slow
def test_lists_both_runs_with_their_best_agreement(two_runs: Path, open_page: OpenPage) -> None:
    at = open_page("history")
    df = _table(at)
    assert list(df["name"]) == ["B", "A"]  # newest first
    # What each run came to, before the wide paths that pushed it off a laptop's screen.
    assert list(df.columns)[:5] == ["name", "when", "status", "verdict", "best agreement (%)"]
    # A run with no finished variant has no best agreement: "—", not the grid's grey "None".
    table = next(d for d in at.dataframe if "verdict" in d.value.columns)
    assert table.proto.placeholder == "—"
    reps = reports(two_runs)
    for name in ("A", "B"):
        best = max(v["top1_agreement_pct"] for v in reps[name]["variants"])
        row = df[df["name"] == name].iloc[0]
        assert row["best agreement (%)"] == pytest.approx(best)
        assert row["status"] == "done"
        assert row["modes"] == ", ".join(v["name"] for v in reps[name]["variants"])
        assert row["model"] == "demo/model/saved_model"  # shown relative to the workspace


@pytest.mark.slow
def test_search_filters_and_says_when_nothing_matches(two_runs: Path, open_page: OpenPage) -> None:
    at = open_page("history", state={keys.HISTORY_SEARCH: "int8"})
    assert list(_table(at)["name"]) == ["B"]
    at.text_input(key=keys.HISTORY_SEARCH).input("no-such-run").run()
    assert not at.dataframe
    assert "No run matches" in at.info[0].value


@pytest.mark.slow
def test_rename_to_markup_and_sql_shows_verbatim(two_runs: Path, open_page: OpenPage) -> None:
    at = _select(open_page("history"), ["A"])
    rid = _id(two_runs, "A")
    at.text_input(key=f"{keys.HISTORY_RENAME}.{rid}").input(NASTY)
    at.button(key=keys.HISTORY_RENAME_SAVE).click().run()
    assert not at.exception
    assert at.success[0].value == "Run renamed."
    # the table holds the exact text, and no markdown element carries raw markup
    assert NASTY in list(_table(at)["name"])
    assert shown_as_text(at.subheader[0].value, NASTY)
    for el in [*at.markdown, *at.caption, *at.subheader]:
        assert "<script>" not in el.value
    with open_store(two_runs) as store:
        assert store.get_run(rid).name == NASTY  # type: ignore[union-attr]
        assert len(store.list_runs()) == 2  # the DROP TABLE stayed text
    rep = json.loads((two_runs / "runs" / rid / rundir.REPORT).read_text())
    assert rep["run"]["name"] == NASTY  # result pages and report.html show the new name too


@pytest.mark.slow
def test_open_selects_the_run_for_the_result_pages(two_runs: Path, open_page: OpenPage) -> None:
    at = _select(open_page("history"), ["A"])
    at.button(key=keys.HISTORY_OPEN).click().run()
    assert at.session_state[keys.SELECTED_RUN] == _id(two_runs, "A")
    assert at.title[0].value == "Overview"
    rep = reports(two_runs)["A"]
    agreements = [m.value for m in at.metric if m.label == "Top-1 agreement"]
    # float16, then the float32 pivot the run added for the conversion/quantization split.
    assert agreements == [pct2(v["top1_agreement_pct"]) for v in rep["variants"]]
    assert [v["name"] for v in rep["variants"]] == ["float16", "float32"]


@pytest.mark.slow
def test_delete_asks_first_then_removes_folder_and_row(two_runs: Path, open_page: OpenPage) -> None:
    rid = _id(two_runs, "B")
    folder = two_runs / "runs" / rid
    at = _select(open_page("history"), ["B"])
    at.button(key=keys.HISTORY_DELETE).click().run()
    assert "Delete 1 run(s)?" in at.warning[0].value
    assert folder.is_dir()  # nothing gone yet
    at.button(key=keys.HISTORY_DELETE_NO).click().run()
    assert folder.is_dir() and not at.warning

    at.button(key=keys.HISTORY_DELETE).click().run()
    at.button(key=keys.HISTORY_DELETE_YES).click().run()
    assert not at.exception
    assert not folder.exists()
    with open_store(two_runs) as store:
        assert store.get_run(rid) is None
    assert list(_table(at)["name"]) == ["A"]
    assert at.success[0].value == "Deleted 1 run(s)."


@pytest.mark.slow
def test_finished_run_offers_delete_not_cancel_and_its_downloads(
    two_runs: Path, open_page: OpenPage
) -> None:
    at = _select(open_page("history"), ["A"])
    assert keys.HISTORY_CANCEL not in _button_keys(at)
    assert keys.HISTORY_DELETE in _button_keys(at)
    rid = _id(two_runs, "A")
    labels = {str(b.key): b.label for b in at.get("download_button")}
    prefix = f"{keys.DOWNLOADS}.{rid}"
    expected = {
        f"{prefix}.report_json": "report.json",
        f"{prefix}.report_html": "report.html",
        f"{prefix}.float16.tflite": "float16.tflite",
        f"{prefix}.float16.csv": "float16.per_sample.csv",
        # the float32 pivot of the conversion/quantization split is a variant with files too
        f"{prefix}.float32.tflite": "float32.tflite",
        f"{prefix}.float32.csv": "float32.per_sample.csv",
    }
    if (two_runs / "runs" / rid / rundir.LABELS).is_file():
        expected[f"{prefix}.labels"] = "labels.txt"
    assert labels == expected


@pytest.mark.slow
def test_download_contents(two_runs: Path) -> None:
    rid = _id(two_runs, "A")
    d = two_runs / "runs" / rid
    rep = json.loads((d / rundir.REPORT).read_text())
    v = rep["variants"][0]
    float16 = read_report(d).variant("float16")
    assert float16 is not None
    table = pd.read_csv(io.BytesIO(per_sample_csv(d, float16)))
    assert len(table) == v["n"]
    assert int((~table["agree"].astype(bool)).sum()) == v["disagreements"]
    assert {"relpath", "ref_top1", "tfl_top1", "max_abs_delta"} <= set(table.columns)
    page = report_html(d, name="Renamed <b>x</b>").decode()
    assert "Renamed &lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page


@pytest.mark.slow
def test_two_selected_runs_go_to_compare(two_runs: Path, open_page: OpenPage) -> None:
    at = _select(open_page("history"), ["A", "B"])
    assert at.subheader[0].value == "2 runs selected"
    at.button(key=keys.HISTORY_COMPARE).click().run()
    a, b = _id(two_runs, "A"), _id(two_runs, "B")
    # Each run's float32 pivot (added for the split) is one of its variants too.
    assert sorted(at.session_state[keys.COMPARE_ITEMS]) == sorted(
        [f"{a}/float16", f"{a}/float32", f"{b}/int8", f"{b}/float32"]
    )
    assert at.title[0].value == "Compare runs"


# ---- store states, no engine needed ------------------------------------------------------------------
def test_empty_workspace_explains(home: Path, open_page: OpenPage) -> None:
    at = open_page("history")
    assert "No runs stored yet" in at.info[0].value


def test_queued_run_can_be_cancelled_not_deleted(home: Path, open_page: OpenPage) -> None:
    rid = jobs.create_run(
        JobSpec(model_path=str(home), data_path=str(home), variants=("int8",), name="Q"),
        home=home,
    )
    at = _select(open_page("history"), ["Q"])
    assert keys.HISTORY_DELETE not in _button_keys(at)
    at.button(key=keys.HISTORY_CANCEL).click().run()
    assert not at.exception
    with open_store(home) as store:
        assert store.get_run(rid).status is RunStatus.CANCELLED  # type: ignore[union-attr]
    # The reason says its status itself, once: "cancelled: cancelled …" was cut in the column.
    assert _table(at)["status"].iloc[0] == "cancelled before it started"


@pytest.mark.parametrize("page", ["overview", "layers", "latency"])
def test_a_run_cancelled_before_any_result_says_so_not_wait(
    home: Path, open_page: OpenPage, page: str
) -> None:
    rid = jobs.create_run(
        JobSpec(model_path=str(home), data_path=str(home), variants=("int8",), name="Q"),
        home=home,
    )
    jobs.cancel_run(rid, home=home)
    at = open_page(page, state={keys.SELECTED_RUN: rid})
    said = (
        f"Run {rid} was cancelled before any variant finished (cancelled before it started), "
        "so it has no results. Pick another run in the sidebar, or start it again on Setup."
    )
    assert [shown_as_text(e.value, said) for e in at.error] == [True], [e.value for e in at.error]


def test_run_killed_with_the_server_shows_as_interrupted(home: Path, open_page: OpenPage) -> None:
    with open_store(home) as store:
        store.create_run("ghost", name="ghost", run_dir=home / "runs" / "ghost", job={})
        store.set_status("ghost", RunStatus.RUNNING)
    at = open_page("history")
    assert _table(at)["status"].iloc[0] == "failed: interrupted"


def test_corrupt_database_is_moved_aside_and_said(home: Path, open_page: OpenPage) -> None:
    (home / DB_NAME).write_bytes(b"this is not a database " * 200)
    at = open_page("history")
    warning = at.warning[0].value
    assert "moved aside" in warning
    aside = list(home.glob(f"{DB_NAME}.corrupt-*"))
    assert len(aside) == 1 and aside[0].name in warning
    assert "No runs stored yet" in at.info[0].value


def test_pending_deletes_keep_only_listed_runs() -> None:
    assert history.pending_deletes(["a", "gone", "b"], {"a": 1, "b": 2}) == ["a", "b"]
    assert history.pending_deletes(None, {"a": 1}) == []
    assert history.pending_deletes("a", {"a": 1}) == []  # a stray string is no list of ids


def test_two_finished_runs_are_deleted_after_one_confirmation(
    home: Path, open_page: OpenPage
) -> None:
    folders = {}
    with open_store(home) as store:
        for rid, name, status in (("r1", "first", RunStatus.DONE), ("r2", "second", "failed")):
            folders[rid] = home / "runs" / rid
            folders[rid].mkdir(parents=True)
            (folders[rid] / "int8.tflite").write_bytes(b"model")
            store.create_run(rid, name=name, run_dir=folders[rid], job={})
            store.set_status(rid, RunStatus(status))
    at = _select(open_page("history"), ["first", "second"])
    at.button(key=keys.HISTORY_DELETE).click().run()
    assert "Delete 2 run(s)?" in at.warning[0].value
    listed = [t.value for t in at.text]
    assert "• first  (r1)" in listed and "• second  (r2)" in listed
    assert all(f.is_dir() for f in folders.values())  # nothing gone before "Yes, delete"
    at.button(key=keys.HISTORY_DELETE_YES).click().run()
    assert not at.exception
    assert not any(f.exists() for f in folders.values())
    with open_store(home) as store:
        assert store.list_runs() == []
    assert at.success[0].value == "Deleted 2 run(s)."
