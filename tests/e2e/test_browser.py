"""The demo loop in a real browser: first launch builds the demo, Run, then read the results."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import CHROMIUM, FLAGS, open_page, settle

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


# A widget label that does not fit its column is cut with an ellipsis (Streamlit does not wrap
# toggle and checkbox labels): the labels that are cut, as the browser lays them out.
CUT_LABELS = """() => Array.from(document.querySelectorAll('[data-testid=stWidgetLabel] *'))
  .filter(e => getComputedStyle(e).textOverflow === 'ellipsis' && e.scrollWidth > e.clientWidth + 1)
  .map(e => e.textContent)"""


def _assert_no_error_on(page, where: str) -> None:  # type: ignore[no-untyped-def]
    """The page shows no uncaught exception, no error alert and no cut widget label (checked on
    every page visited)."""
    exceptions = page.locator("[data-testid=stException]").all_inner_texts()
    errors = page.locator("[data-testid=stAlertContentError]").all_inner_texts()
    assert exceptions == [] and errors == [], (where, exceptions, errors)
    assert page.evaluate(CUT_LABELS) == [], where


def _visit(page, title: str, ms: int = 1500) -> None:  # type: ignore[no-untyped-def]
    """Open a page from the sidebar, let it settle, and check it for errors."""
    open_page(page, title, ms)
    _assert_no_error_on(page, title)


def _check_report_offline(browser, report_file: Path) -> None:  # type: ignore[no-untyped-def]
    """report.html renders its charts and images with every network request refused."""
    context = browser.new_context()
    requested: list[str] = []

    def refuse(route) -> None:  # type: ignore[no-untyped-def]
        requested.append(route.request.url)
        route.abort()

    context.route(re.compile(r"^(https?|wss?)://"), refuse)
    page = context.new_page()
    page.goto(report_file.as_uri())
    page.wait_for_selector(".js-plotly-plot .main-svg", timeout=60_000)
    page.wait_for_timeout(1500)
    assert page.locator(".js-plotly-plot").count() >= 3
    widths = page.locator("img").evaluate_all(
        "els => els.map(e => e.complete ? e.naturalWidth : 0)"
    )
    content = page.content()
    flips = len(re.findall(r"\d+ of \d+ samples disagree", content))
    if flips:  # the top disagreements are inlined images that really decode
        assert widths and all(w > 0 for w in widths), widths
    else:
        assert "every sample agrees" in content
    assert "PASS" in content or "FAIL" in content
    page.screenshot(path=str(ARTIFACTS / "07-report-offline.png"), full_page=True)
    context.close()
    assert requested == [], requested


def test_demo_loop(server: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(server)
        # First launch: the demo is built in the background; the page says so, then reloads.
        expect(page.get_by_text("Building the demo model")).to_be_visible(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "01-demo-building.png"))
        expect(page.get_by_text("4 · Variants")).to_be_visible(timeout=900_000)
        settle(page)
        _assert_no_error_on(page, "Setup")
        for mode in ("float32", "dynamic"):
            page.get_by_role("button", name=f"Remove {mode}").click()
            settle(page, 500)
        run = page.get_by_role("button", name="Run", exact=True)
        expect(run).to_be_enabled(timeout=120_000)
        page.screenshot(path=str(ARTIFACTS / "02-setup.png"), full_page=True)
        run.click()
        expect(page.get_by_text("Run finished")).to_be_visible(timeout=600_000)
        # The run's end reruns the whole page, which then links to the overview.
        expect(page.get_by_role("link", name="Open the overview")).to_be_visible(timeout=120_000)
        settle(page)
        _assert_no_error_on(page, "Setup after the run")
        # The sidebar says the run is done (its label said "queued" until the next page), and
        # the form still has the modes the run was asked for.
        sidebar = page.locator("[data-testid=stSidebar]").aria_snapshot()
        assert re.search(r'combobox "Run shown": done · ', sidebar), sidebar
        expect(page.get_by_text("2 variant(s): float16, int8", exact=True)).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "03-run-finished.png"), full_page=True)

        _visit(page, "Overview")
        expect(page.get_by_text("top-1 agreement threshold")).to_be_visible(timeout=60_000)
        # one verdict badge per variant (the badge text carries its icon name: "check PASS")
        badges = page.get_by_text(re.compile(r"\b(PASS|FAIL)\b"))
        assert badges.count() >= 2, badges.all_inner_texts()
        page.screenshot(path=str(ARTIFACTS / "04-overview.png"), full_page=True)

        # The report a stakeholder gets: downloaded from the dashboard, opened with no network.
        page.get_by_text("Downloads", exact=True).first.click()  # an expander, not a page
        settle(page, 500)
        with page.expect_download(timeout=120_000) as download:
            page.get_by_role("button", name="report.html").click()
        report_file = tmp_path / "report.html"
        download.value.save_as(report_file)
        _check_report_offline(browser, report_file)

        for title in ("Size", "Agreement", "Probability deltas", "History"):
            _visit(page, title)

        _visit(page, "Disagreements", 2500)
        images = page.locator("[data-testid=stImage] img")
        if images.count() == 0:
            expect(page.get_by_text("No disagreements")).to_be_visible()
        else:
            widths = images.evaluate_all("els => els.map(e => e.complete ? e.naturalWidth : 0)")
            assert all(w > 0 for w in widths), widths
        page.screenshot(path=str(ARTIFACTS / "05-disagreements.png"), full_page=True)

        _visit(page, "Latency", 2500)
        # Charts draw after the script settles; on a loaded machine that can take seconds.
        expect(page.locator(".js-plotly-plot").nth(1)).to_be_attached(timeout=60_000)
        expect(page.get_by_text("latency (ms, log scale)").first).to_be_attached()
        page.screenshot(path=str(ARTIFACTS / "06-latency.png"), full_page=True)

        # The run's int8 is diagnosed per layer: its error along the network and the ranking.
        _visit(page, "Layers", 2500)
        expect(page.get_by_text("Ranked layers")).to_be_visible(timeout=60_000)
        expect(page.locator(".js-plotly-plot").first).to_be_attached(timeout=60_000)
        expect(page.get_by_text("op order in the model").first).to_be_attached()
        # One layer's details, and the re-score controls (tests/core/test_rescore.py runs one).
        expect(page.get_by_text("Layer details", exact=True)).to_be_visible()
        expect(page.get_by_text("Weight range", exact=True)).to_be_visible()
        expect(
            page.get_by_role("button", name="Re-score with these layers in float")
        ).to_be_visible()
        _assert_no_error_on(page, "Layers")
        page.screenshot(path=str(ARTIFACTS / "07-layers.png"), full_page=True)

        # A reload (or a shared link) on a page keeps the sectioned navigation: with the pages
        # in a folder named pages/, Streamlit listed its files there instead (app, agreement, …).
        page.goto(server.rstrip("/") + "/layers")
        expect(page.get_by_text("Ranked layers")).to_be_visible(timeout=60_000)
        nav = page.locator("[data-testid=stSidebarNav]")
        expect(nav.get_by_text("Results", exact=True)).to_be_visible()
        expect(nav.get_by_text("Probability deltas", exact=True)).to_be_visible()
        expect(nav.get_by_text("app", exact=True)).to_have_count(0)
        browser.close()
