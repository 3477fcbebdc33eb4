"""Layers and Overview in a real browser on a run with derived variants (kept in float by
--modes, added by --auto-fix, added by a re-score): each variant of the Layers page's picker
opens with no exception on the page."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.app.derived_fixtures import AUTO_FIX, KEEP_FLOAT, RESCORED, derived_run_home
from tests.app.history_fixtures import copy_workspace
from tests.e2e.conftest import CHROMIUM, FLAGS, Server, open_page, settle

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

CRASH_TEXTS = ("Traceback", "StreamlitDefaultNotInOptionsError", "This app has encountered")


def _no_exception(page, where: str) -> None:  # type: ignore[no-untyped-def]
    exceptions = page.locator("[data-testid=stException]").all_inner_texts()
    body = page.locator("body").inner_text()
    crashes = [t for t in CRASH_TEXTS if t in body]
    assert exceptions == [] and crashes == [], (where, exceptions, crashes)


def test_layers_and_overview_open_on_derived_variants(
    tmp_path_factory: pytest.TempPathFactory,
    built_demo: Path,
    tmp_path: Path,
    start_server: Callable[..., Server],
) -> None:
    from playwright.sync_api import expect, sync_playwright

    home = copy_workspace(derived_run_home(tmp_path_factory, built_demo), tmp_path / "ws")
    server = start_server(home)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1300})
        page.goto(f"{server.url}/layers")
        settle(page)
        _no_exception(page, "Layers")
        expect(page.get_by_text("Ranked layers")).to_be_visible(timeout=60_000)
        picker = page.locator("[data-testid=stMain] [data-testid=stSelectbox]").first
        for name in ("int8", KEEP_FLOAT, AUTO_FIX, RESCORED):
            picker.click(timeout=60_000)  # the page may still be drawing on a busy machine
            page.get_by_role("option", name=name, exact=True).click(timeout=60_000)
            settle(page)
            _no_exception(page, f"Layers: {name}")
            # The page drew to its end: the re-score controls come last.
            expect(page.get_by_text("Keep in float and re-score")).to_be_visible(timeout=60_000)
        open_page(page, "Overview")
        _no_exception(page, "Overview")
        body = page.locator("[data-testid=stMain]").inner_text()
        assert all(name in body for name in (KEEP_FLOAT, AUTO_FIX, RESCORED)), body[:1000]
        browser.close()
