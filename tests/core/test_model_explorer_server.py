"""The dashboard's Model Explorer: loopback only, one per server, never left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from core import posix
from core.jobs import model_explorer_server as explorer

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not explorer.installed(), reason="ai-edge-model-explorer (requirements-extras.txt) missing"
)


@pytest.mark.parametrize("address", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_dashboards_get_a_loopback_explorer(address: str) -> None:
    assert explorer.listen_host(address, {}) == "127.0.0.1"


@pytest.mark.parametrize("address", ["", None, "0.0.0.0", "10.1.2.3", "dashboard.example"])
def test_other_interfaces_are_refused_unless_the_operator_opts_in(address: str | None) -> None:
    with pytest.raises(explorer.ModelExplorerUnavailable) as refused:
        explorer.listen_host(address, {})
    assert explorer.ANY_INTERFACE_ENV in str(refused.value)
    assert "\n" not in str(refused.value)
    opted_in = explorer.listen_host(address, {explorer.ANY_INTERFACE_ENV: "1"})
    assert opted_in == (address or "0.0.0.0")


def test_the_url_carries_the_model_and_its_overlay(tmp_path: Path) -> None:
    server = explorer.Explorer(host="127.0.0.1", port=8123, pid=1)
    url = urlparse(server.url(tmp_path / "a.tflite", tmp_path / "a.model-explorer.json"))
    assert (url.hostname, url.port) == ("127.0.0.1", 8123)
    data = json.loads(parse_qs(url.query)["data"][0])
    assert data == {
        "models": [{"url": str(tmp_path / "a.tflite")}],
        "nodeData": [str(tmp_path / "a.model-explorer.json")],
        "nodeDataTargets": [""],
    }


def test_without_the_package_one_line_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fresh server state: an app test earlier in this worker process may have started one,
    # and a running explorer is rightly reused whatever is installed now.
    monkeypatch.setattr(explorer, "_SERVER", explorer._Server())
    monkeypatch.setattr(explorer, "installed", lambda: False)
    with pytest.raises(explorer.ModelExplorerUnavailable) as missing:
        explorer.ensure_started("127.0.0.1")
    assert "pip install ai-edge-model-explorer==0.1.34" in str(missing.value)
    assert "\n" not in str(missing.value)


# A stand-in for the dashboard's server process: starts the explorer twice (one per server),
# reports it, then exits cleanly or waits to be killed.
PARENT = """
import sys, time
from core.jobs import model_explorer_server as e
a = e.ensure_started("127.0.0.1")
b = e.ensure_started("127.0.0.1")
print(a.pid, b.pid, a.port, a.host, flush=True)
if sys.argv[1] == "exit":
    sys.stdin.readline()
    sys.exit(0)
time.sleep(600)
"""


def _gone(pid: int, within_s: float = 30.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not posix.pid_alive(pid):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("ending", ["exit", "sigkill"])
def test_one_explorer_per_server_on_loopback_and_it_ends_with_the_server(ending: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, ending],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    child = 0
    try:
        assert parent.stdout is not None
        first, second, port, host = parent.stdout.readline().decode().split()
        child = int(first)
        assert first == second  # the second call reuses the server's one explorer
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/check_health", timeout=5) as r:
            assert r.status == 200
        listening = subprocess.run(
            ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, check=False
        ).stdout
        if listening:  # `ss` present: it listens on loopback only
            assert all("127.0.0.1:" in line for line in listening.splitlines())
        if ending == "exit":
            assert parent.stdin is not None
            parent.stdin.write(b"\n")
            parent.stdin.flush()
            parent.wait(timeout=30)  # atexit stops it
        else:
            parent.send_signal(signal.SIGKILL)  # no atexit: the child sees its parent go
            parent.wait(timeout=30)
        assert _gone(child), f"Model Explorer (pid {child}) outlived its server"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child and posix.pid_alive(child):
            os.kill(child, signal.SIGKILL)
