"""Shared browser-test machinery: a real `streamlit run app.py`, Debian chromium, one demo build."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
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


def require_chromium() -> None:
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):  # CI installs it (.ci/run): a missing browser is a failure there
            pytest.fail("Debian chromium is missing: apt-get install -y chromium")
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One `streamlit run app.py` process on a workspace; stop() and start() again to restart."""

    def __init__(self, home: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.log = log
        self.env = dict(os.environ, QUANTLENS_HOME=str(home), TF_CPP_MIN_LOG_LEVEL="3")
        self.env.pop("QUANTLENS_FAULT", None)
        self.env.update(env or {})
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "streamlit", "run", "app.py",
                    "--server.port", str(self.port),
                    "--server.headless", "true",
                    "--server.fileWatcherType", "none",
                ],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"the server did not start; see {self.log}")

    def stop(self) -> None:
        """A polite stop (SIGTERM, then SIGKILL): what a user's Ctrl-C amounts to."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=15)
        self.proc = None

    def kill(self) -> None:
        """SIGKILL the server's whole process group, as a crash or an OOM killer would."""
        if self.proc is None:
            return
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=15)
        self.proc = None


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start real servers on workspaces; every one still running is stopped at the end."""
    require_chromium()
    started: list[Server] = []

    def _start(home: Path, *, env: dict[str, str] | None = None) -> Server:
        server = Server(home, tmp_path / f"server-{len(started)}.log", env).start()
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()


@pytest.fixture
def server(tmp_path: Path, start_server: Callable[..., Server]) -> str:
    """A real `streamlit run app.py` on a free port, with an empty workspace."""
    return start_server(tmp_path / "ws").url


@pytest.fixture(scope="session")
def demo_template(built_demo: Path) -> Path:
    """The embedded demo: the session's one build (tests/conftest.py)."""
    require_chromium()
    return built_demo


@pytest.fixture
def demo_workspace(demo_template: Path, tmp_path: Path) -> Path:
    """A fresh workspace holding a copy of the built demo and no runs."""
    home = tmp_path / "ws"
    shutil.copytree(demo_template, home / "demo", symlinks=True)
    return home


def settle(page, ms: int = 1500) -> None:  # type: ignore[no-untyped-def]
    """Wait until Streamlit stops running the script, then a little more for drawing."""
    page.wait_for_selector("[data-testid=stApp]", timeout=60_000)
    for _ in range(240):
        page.wait_for_timeout(250)
        if page.locator("[data-testid=stStatusWidget]").count() == 0:
            break
    page.wait_for_timeout(ms)


def open_page(page, title: str, ms: int = 1500) -> None:  # type: ignore[no-untyped-def]
    """Open a page from the sidebar, wait until the browser is on it, then let it settle.

    Streamlit merges the requests that reach the server while a script runs, and the newer
    one's page wins: a click that lands just as the page reruns itself (a run that ends, a
    fragment's tick) can be dropped. A person clicks again when the page did not change; so
    does this, up to twice, and fails if the page never opens.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    link = page.locator("[data-testid=stSidebarNav]").get_by_role("link", name=title, exact=True)
    href = link.get_attribute("href", timeout=60_000)
    for _ in range(3):
        link.click(timeout=60_000)
        try:
            page.wait_for_url(href, timeout=20_000)
            break
        except PlaywrightTimeoutError:
            continue
    else:
        raise AssertionError(f"the sidebar's {title!r} did not open its page ({href})")
    settle(page, ms)
