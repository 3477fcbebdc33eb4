"""A Ray cluster lost mid-run (issue 14, RELIABILITY.md): the run ends failed in bounded time
with one line that says the cluster was lost and what to do, and what was saved stays.

The cluster is real: `ray start --head --block` on 127.0.0.1 in its own process group and its
own temp folder; the test kills that process group while the run is in the cluster pass.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.core.test_cli import REPO

pytestmark = pytest.mark.slow

# Ray's CLI through this interpreter: the venv's `ray` script may carry another venv's shebang.
RAY = [sys.executable, "-m", "ray.scripts.scripts"]
RUN_LIMIT_S = 300  # the whole run, cluster lost included, must end within this


@dataclass
class Cluster:
    address: str
    process: subprocess.Popen[bytes]
    temp_dir: Path

    def kill(self) -> None:
        """Kill every process of this cluster (its own process group), and nothing else."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def kill_hanging_children(self) -> None:
        """The `sleep` the hang fault started in a Ray worker, by the pid it logged."""
        for log in self.temp_dir.glob("session_*/logs/*"):
            text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
            for pid in re.findall(r"fault: hanging with child process (\d+)", text):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)

    def worker_hangs(self) -> bool:
        return any(
            "fault: hanging with child process" in log.read_text(errors="replace")
            for log in self.temp_dir.glob("session_*/logs/worker-*.err")
        )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    # Ray's Unix sockets live under the temp folder: keep its path short.
    temp_dir = Path(tempfile.mkdtemp(prefix="qlr", dir="/tmp"))
    port = _free_port()
    process = subprocess.Popen(
        [
            *RAY,
            "start",
            "--head",
            "--block",
            "--port",
            str(port),
            "--node-ip-address",
            "127.0.0.1",
            "--num-cpus",
            "2",
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
            "--temp-dir",
            str(temp_dir),
            # Ray's fixed default ports would collide with any other Ray on this machine.
            "--dashboard-port",
            str(_free_port()),
            "--ray-client-server-port",
            str(_free_port()),
        ],
        # Ray 2.60 turns token authentication on by default; a test cluster needs none.
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the test kills exactly this cluster
    )
    found = Cluster(address=f"127.0.0.1:{port}", process=process, temp_dir=temp_dir)
    try:
        _wait_for_port(port, timeout=120)
        yield found
    finally:
        found.kill()
        found.kill_hanging_children()


def _wait_for_port(port: int, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"ray start --head did not listen on {port} within {timeout} s")


def _events(run_dir: Path) -> list[dict[str, object]]:
    try:
        text = (run_dir / "progress.jsonl").read_text(encoding="utf-8")
    except OSError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_a_cluster_lost_mid_run_fails_the_run_in_one_line(
    cluster: Cluster, tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    env = {
        **os.environ,
        "QUANTLENS_HOME": str(tmp_path),
        # Every Ray worker hangs in its first shard: the run is surely in the cluster pass
        # when the cluster is killed.
        "QUANTLENS_FAULT": "hang@shard",
        # The cluster has no authentication; an earlier ray.init in this test process leaves
        # RAY_AUTH_MODE=token in os.environ, and a driver that inherits it is refused.
        "RAY_AUTH_MODE": "disabled",
    }
    started = time.monotonic()
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "core",
            "run",
            str(tiny_models["saved_model"]),
            "--data",
            str(tiny_data),
            "--modes",
            "float16",
            "--preprocess",
            "unit",
            "--engine",
            "ray",
            "--ray-address",
            cluster.address,
            "--out",
            str(out),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + RUN_LIMIT_S
        while not cluster.worker_hangs():
            assert cli.poll() is None, cli.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run never reached the cluster pass"
            time.sleep(0.5)
        saved = {
            p.name: p.read_bytes()
            for p in out.iterdir()
            if p.is_file() and p.suffix in {".tflite", ".npy"}
        }
        report_before = json.loads((out / "report.json").read_text())
        cluster.kill()
        killed = time.monotonic()
        _, stderr = cli.communicate(timeout=RUN_LIMIT_S)
    finally:
        if cli.poll() is None:
            cli.kill()
    took = time.monotonic() - killed
    assert cli.returncode == 2, stderr[-3000:]  # failed, not crashed: nothing of ours broke
    expected = (
        f"lost the Ray cluster at {cluster.address} during the evaluation: nobody answers there "
        f"any more; restart it (`ray start --head` on that machine, check with `ray status "
        f"--address {cluster.address}`) and run again, or use --engine local"
    )
    assert [ln for ln in stderr.splitlines() if ln.startswith("error:")] == [f"error: {expected}"]
    status = json.loads((out / "status.json").read_text())
    assert (status["status"], status["error"]) == ("failed", expected)
    report = json.loads((out / "report.json").read_text())
    assert {v["name"]: (v["status"], v["error"]) for v in report["variants"]} == {
        "float16": ("failed", f"not run: {expected}"),
        "float32": ("failed", f"not run: {expected}"),
    }
    # What was saved before the cluster went away is still there, byte for byte.
    assert saved and all((out / name).read_bytes() == data for name, data in saved.items())
    assert report["engine"] == report_before["engine"]
    assert report["run"]["command"] == report_before["run"]["command"]
    # Bounded: the watcher notices within seconds, well before Ray's own minute.
    assert took < 45, f"the run took {took:.0f} s to end after the cluster was killed"
    assert time.monotonic() - started < RUN_LIMIT_S
