"""The demo loop in a real browser: first launch builds the demo, Run, then read the results."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """A real `streamlit run app.py` on a free port, with an empty workspace."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):  # CI installs it (.ci/run): a missing browser is a failure there
            pytest.fail("Debian chromium is missing: apt-get install -y chromium")
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")
    port = _free_port()
    env = dict(os.environ, QUANTLENS_HOME=str(tmp_path / "ws"), TF_CPP_MIN_LOG_LEVEL="3")
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            "app.py",
            "--server.port",
            str(port),
            "--server.headless",
            "true",
            "--server.fileWatcherType",
            "none",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _settle(page, ms: int = 1500) -> None:  # type: ignore[no-untyped-def]
    page.wait_for_selector("[data-testid=stApp]", timeout=60_000)
    for _ in range(240):
        page.wait_for_timeout(250)
        if page.locator("[data-testid=stStatusWidget]").count() == 0:
            break
    page.wait_for_timeout(ms)


def _assert_no_error_on(page, where: str) -> None:  # type: ignore[no-untyped-def]
    """The page shows no uncaught exception and no error alert (checked on every page visited)."""
    exceptions = page.locator("[data-testid=stException]").all_inner_texts()
    errors = page.locator("[data-testid=stAlertContentError]").all_inner_texts()
    assert exceptions == [] and errors == [], (where, exceptions, errors)


def _visit(page, title: str, ms: int = 1500) -> None:  # type: ignore[no-untyped-def]
    """Open a page from the sidebar, let it settle, and check it for errors."""
    page.get_by_text(title, exact=True).first.click()
    _settle(page, ms)
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
        _settle(page)
        _assert_no_error_on(page, "Setup")
        for mode in ("float32", "dynamic"):
            page.get_by_role("button", name=f"Remove {mode}").click()
            _settle(page, 500)
        run = page.get_by_role("button", name="Run", exact=True)
        expect(run).to_be_enabled(timeout=120_000)
        page.screenshot(path=str(ARTIFACTS / "02-setup.png"), full_page=True)
        run.click()
        expect(page.get_by_text("Run finished")).to_be_visible(timeout=600_000)
        _assert_no_error_on(page, "Setup after the run")
        page.screenshot(path=str(ARTIFACTS / "03-run-finished.png"), full_page=True)

        _visit(page, "Overview")
        expect(page.get_by_text("top-1 agreement threshold")).to_be_visible()
        # one verdict badge per variant (the badge text carries its icon name: "check PASS")
        badges = page.get_by_text(re.compile(r"\b(PASS|FAIL)\b"))
        assert badges.count() >= 2, badges.all_inner_texts()
        page.screenshot(path=str(ARTIFACTS / "04-overview.png"), full_page=True)

        # The report a stakeholder gets: downloaded from the dashboard, opened with no network.
        page.get_by_text("Downloads", exact=True).first.click()
        _settle(page, 500)
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
        browser.close()
