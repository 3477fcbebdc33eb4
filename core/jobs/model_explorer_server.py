"""Google's Model Explorer as a subprocess of the dashboard: one per server, loopback only.

The page embeds it in an iframe with the variant's `.tflite` and its per-op error overlay
(core.reporting.model_explorer), so a node's colour is the error the page's table shows.

Model Explorer's `/api/v1/read_text_file?path=...` returns any file its process can read, so:
- it listens on 127.0.0.1 only;
- it is not started when the dashboard itself is served on another interface (the iframe would
  then point a remote browser at a file-read endpoint), unless the operator opts in with
  `QUANTLENS_MODEL_EXPLORER_ANY_INTERFACE=1`; then it listens on the dashboard's address.

It never outlives the server: an atexit hook stops it on a clean exit, and the child watches its
parent and exits when the parent is gone (a SIGKILLed server runs no atexit hook).

The web server imports this module; the `model_explorer` package is imported only in the child
(`python -m core.jobs.model_explorer_server`), which loads no TensorFlow into the server.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from core.errors import QuantLensError
from core.jobs.workspace import SOURCE_ROOT

ANY_INTERFACE_ENV = "QUANTLENS_MODEL_EXPLORER_ANY_INTERFACE"
INSTALL_HINT = (
    "Model Explorer is not installed: `pip install ai-edge-model-explorer==0.1.34` "
    "(or `pip install -r requirements-extras.txt`) and restart the dashboard to see the graph here"
)
LOOPBACK = "127.0.0.1"
READY_SECONDS = 30.0  # it answers in about 0.5 s; a loaded 2-core host is slower
PARENT_POLL_SECONDS = 0.5


class ModelExplorerUnavailable(QuantLensError):
    """Model Explorer cannot be shown in the page; the message says why and what to do."""


@dataclass(frozen=True)
class Explorer:
    """A running Model Explorer: where it listens and its process id."""

    host: str
    port: int
    pid: int

    def url(self, model: Path, node_data: Path | None = None, *, browser_host: str = "") -> str:
        """The address that opens `model` with `node_data` applied (Model Explorer's own
        `?data=` parameter: absolute paths it reads itself).

        `browser_host` is the host name the browser reached the dashboard by; it is used only
        when Model Explorer listens on another interface than loopback (the operator's opt-in).
        """
        data: dict[str, object] = {"models": [{"url": str(Path(model).resolve())}]}
        if node_data is not None:
            data["nodeData"] = [str(Path(node_data).resolve())]
            data["nodeDataTargets"] = [""]
        host = self.host if is_loopback(self.host) or not browser_host else browser_host
        return f"http://{host}:{self.port}/?data={quote(json.dumps(data))}"


def installed() -> bool:
    """Whether the optional `ai-edge-model-explorer` package is importable."""
    return importlib.util.find_spec("model_explorer") is not None


def is_loopback(address: str | None) -> bool:
    """Whether a listening address reaches this machine only. An empty address is Streamlit's
    default, every interface."""
    if not address:
        return False
    if address.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def listen_host(served_on: str | None, env: Mapping[str, str]) -> str:
    """The address Model Explorer may listen on, given the dashboard's own.

    Raises:
        ModelExplorerUnavailable: the dashboard is served on another interface and the operator
            has not opted in.
    """
    if is_loopback(served_on):
        return LOOPBACK
    if env.get(ANY_INTERFACE_ENV, "") == "1":
        return served_on or "0.0.0.0"
    where = served_on or "every interface"
    raise ModelExplorerUnavailable(
        f"the dashboard is served on {where}, and Model Explorer would serve any file this "
        f"host can read to the network, so it is not started; set {ANY_INTERFACE_ENV}=1 to "
        "allow it, or serve the dashboard on 127.0.0.1"
    )


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host != "0.0.0.0" else LOOPBACK, 0))
        return int(s.getsockname()[1])


def _answers(host: str, port: int) -> bool:
    probe = LOOPBACK if host == "0.0.0.0" else host
    try:
        with urllib.request.urlopen(f"http://{probe}:{port}/check_health", timeout=1) as r:
            return int(r.status) == 200
    except OSError:
        return False


class _Server:
    """The one Model Explorer process of this server (module state: Streamlit imports this
    module once per server process, and every session shares it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None
        self.explorer: Explorer | None = None
        self.failure: str | None = None

    def start(self, served_on: str | None, env: Mapping[str, str]) -> Explorer:
        with self.lock:
            if self.explorer is not None and self.process is not None:
                if self.process.poll() is None:
                    return self.explorer
                self.explorer = self.process = None  # it died: start a fresh one
            if not installed():
                raise ModelExplorerUnavailable(INSTALL_HINT)
            host = listen_host(served_on, env)
            if self.failure is not None:  # do not retry a broken install on every rerun
                raise ModelExplorerUnavailable(self.failure)
            self.explorer = self._spawn(host)
            return self.explorer

    def _spawn(self, host: str) -> Explorer:
        port = _free_port(host)
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "core.jobs.model_explorer_server",
                "--host",
                host,
                "--port",
                str(port),
                "--parent",
                str(os.getpid()),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=str(SOURCE_ROOT),
            start_new_session=True,  # a Ctrl+C in the server's terminal is the server's
        )
        deadline = time.monotonic() + READY_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = (process.stderr.read() if process.stderr else b"").decode(errors="replace")
                last = (tail.strip().splitlines() or ["no output"])[-1]
                self.failure = f"Model Explorer exited at start ({last})"
                raise ModelExplorerUnavailable(self.failure)
            if _answers(host, port):
                if process.stderr is not None:
                    process.stderr.close()  # nothing reads it from here on; never block the child
                self.process = process
                return Explorer(host=host, port=port, pid=process.pid)
            time.sleep(0.1)
        _end(process)
        raise ModelExplorerUnavailable(
            f"Model Explorer did not answer within {READY_SECONDS:g} s; reload the page to retry"
        )

    def stop(self) -> None:
        with self.lock:
            if self.process is not None:
                _end(self.process)
            self.process = self.explorer = None


def _end(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (Model Explorer's server has no cleanup to do), SIGKILL if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
    except ProcessLookupError:
        pass


_SERVER = _Server()
atexit.register(_SERVER.stop)


def ensure_started(served_on: str | None, env: Mapping[str, str] | None = None) -> Explorer:
    """The server's Model Explorer, started on first use.

    Args:
        served_on: the address the dashboard listens on (Streamlit's `server.address`; empty
            or None for every interface).
        env: where to read the opt-in (the process environment by default).

    Raises:
        ModelExplorerUnavailable: not installed, not allowed on this interface, or it failed
            to start; the one-line message says which and what to do.
    """
    return _SERVER.start(served_on, os.environ if env is None else env)


def stop() -> None:
    """Stop the server's Model Explorer (also run at exit)."""
    _SERVER.stop()


# -- the child ---------------------------------------------------------------------------------


def _watch_parent(parent: int) -> None:
    """Exit when the server that started this process is gone (it is reparented then)."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Model Explorer for one QuantLens server.")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    if os.getppid() != args.parent:
        return
    import model_explorer

    threading.Thread(target=_watch_parent, args=(args.parent,), daemon=True).start()
    # Blocks for good; an explicit port that is taken makes it exit, which the parent sees.
    model_explorer.visualize_from_config(
        None, host=args.host, port=args.port, no_open_in_browser=True
    )


if __name__ == "__main__":
    main()
