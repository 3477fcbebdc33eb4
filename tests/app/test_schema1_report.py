"""A run written before the typed run model (report.json schema 1) opens on the pages with the
numbers it holds, and opening it rewrites nothing. Expectations come from the JSON itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tests.app.conftest import OpenPage
from tests.app.expected import megabytes, pct2, shown_as_text
from tests.app.fixtures import _register
from ui import keys

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "schema1_run"


def _install(home: Path) -> tuple[Path, dict[str, Any]]:
    raw: dict[str, Any] = json.loads((FIXTURE / "report.json").read_text(encoding="utf-8"))
    run_dir = home / "runs" / raw["run"]["id"]
    shutil.copytree(FIXTURE, run_dir)
    _register(home, run_dir, raw)
    return run_dir, raw


def _shown_name(raw: dict[str, Any], entry: dict[str, Any]) -> str:
    return f"{entry['name']} (pivot)" if entry["name"] == raw["pivot"] else entry["name"]


def test_overview_of_a_schema_1_run_shows_its_numbers(home: Path, open_page: OpenPage) -> None:
    run_dir, raw = _install(home)
    before = (run_dir / "report.json").read_bytes()
    at = open_page("overview", state={keys.SELECTED_RUN: raw["run"]["id"]})
    done = [v for v in raw["variants"] if v["status"] == "done"]
    assert len(done) == 5
    md = [m.value for m in at.markdown]
    for entry in done:
        [idx] = [
            i
            for i, m in enumerate(md)
            if m.startswith("#### ") and shown_as_text(m[5:], _shown_name(raw, entry))
        ]
        assert "NO VERDICT" in md[idx + 1]  # the tiny model is near chance on its labels
    agreements = [m.value for m in at.metric if m.label == "Top-1 agreement"]
    assert agreements == [pct2(v["top1_agreement_pct"]) for v in done]
    sizes = [m.value for m in at.metric if m.label == "Size"]
    assert sizes == [megabytes(v["size_bytes"]) for v in done]
    table = at.dataframe[0].value
    assert list(table["model"]) == ["original", *(v["name"] for v in raw["variants"])]
    for entry in done:
        row = table[table["model"] == entry["name"]]
        assert row["disagreements"].item() == entry["disagreements"]
        assert row["p50 (ms)"].item() == entry["latency_ms"]["p50"]
    assert (run_dir / "report.json").read_bytes() == before  # opening rewrites nothing


def test_size_page_of_a_schema_1_run_lists_every_variant(home: Path, open_page: OpenPage) -> None:
    _, raw = _install(home)
    at = open_page("size", state={keys.SELECTED_RUN: raw["run"]["id"]})
    table = at.dataframe[0].value
    assert list(table["model"]) == ["original", *(v["name"] for v in raw["variants"])]
    by_name = dict(zip(table["model"], table["bytes"], strict=True))
    assert by_name["original"] == raw["reference"]["size_bytes"]
    for entry in raw["variants"]:
        assert by_name[entry["name"]] == entry["size_bytes"]
