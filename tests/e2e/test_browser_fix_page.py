"""The fix page in a real browser, on a real run of the embedded outlier-channel demo: the cause
with its per-channel chart, the fix ladder, and the embedded Model Explorer graph with the
per-op error overlay; Model Explorer is gone once the server stops."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import pytest

from core.jobs import model_explorer_server as explorer
from tests.app.history_fixtures import copy_workspace
from tests.app.outlier_fixtures import outlier_run_home
from tests.e2e.conftest import CHROMIUM, FLAGS, Server, settle

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not explorer.installed(), reason="ai-edge-model-explorer missing"),
]


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/check_health", timeout=2):
            return True
    except OSError:
        return False


def test_fix_page_shows_cause_ladder_and_the_embedded_graph(
    demo_template: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
    start_server: Callable[..., Server],
) -> None:
    from playwright.sync_api import expect, sync_playwright

    home = copy_workspace(outlier_run_home(demo_template, tmp_path_factory), tmp_path / "ws")
    server = start_server(home)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1300})
        page.goto(f"{server.url}/layers")
        settle(page)
        main = page.locator("[data-testid=stMain]")
        expect(main.get_by_text("Why it broke, and the fixes")).to_be_visible(timeout=60_000)
        expect(main.get_by_text("one channel spans", exact=False)).to_be_visible()
        # The per-channel chart (plotly draws its title as SVG text).
        expect(main.locator(".gtitle").filter(has_text="per channel on")).to_be_visible(
            timeout=60_000
        )
        for rung in ("Cross-layer equalization", "16-bit activations", "Keep in float"):
            expect(main.get_by_text(rung, exact=True).first).to_be_visible()
        # The graph: Model Explorer's own page, in the iframe, with QuantLens's overlay loaded.
        frame_element = page.locator("iframe").first
        src = frame_element.get_attribute("src") or ""
        assert urlparse(src).hostname == "127.0.0.1"
        frame_element.scroll_into_view_if_needed()
        graph = page.frame_locator("iframe").first
        expect(graph.get_by_text("QuantLens int8", exact=False).first).to_be_visible(timeout=90_000)
        page.screenshot(path=str(tmp_path / "fix-page.png"), full_page=True)
        browser.close()
    port = urlparse(src).port
    assert port is not None and _answers(port)
    server.stop()
    for _ in range(120):  # Model Explorer exits with its server
        if not _answers(port):
            break
        time.sleep(0.5)
    assert not _answers(port), "Model Explorer outlived the dashboard"
