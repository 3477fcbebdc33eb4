"""Ray for real: a cluster of two nodes on loopback with one killed mid-pass, the README's
recipe as written (token authentication on), a connect that never hangs, and a private local
Ray beside someone else's head. Every cluster here runs on 127.0.0.1 in its own temp folder or
process group and is stopped by the test that started it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.core.conftest import write_tiny_images
from tests.core.test_cli import REPO, run_cli

pytestmark = pytest.mark.slow

# Ray's CLI through this interpreter: the venv's `ray` script may carry another venv's shebang.
RAY = [sys.executable, "-m", "ray.scripts.scripts"]
MODES = "float16,int8"
IMAGES = 512  # 412 evaluated (100 held out to calibrate): 13 batches of 32, enough for two nodes
# Environment that would point Ray elsewhere than the test says: none of it may leak in.
RAY_ENV = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
           "RAY_NODE_IP_ADDRESS")  # fmt: skip
# Files that differ between two runs by design: when and where they ran, not what they found.
RUN_RECORDS = {"report.json", "report.html", "status.json", "progress.jsonl", "job.json",
               "worker.log"}  # fmt: skip
TIMING = re.compile(
    r"latency|speedup|seconds|_s$|time"
)  # per-invoke timings: measured, not computed
# Whether a conversion came from the conversion cache (the suite shares one across its runs):
# the bytes are the same either way, and the files are compared byte for byte.
PROVENANCE = frozenset({"conversion_cached"})


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RAY_ENV}
    return {**env, **extra}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_images(tmp_path_factory.mktemp("cluster_images"), per_class=IMAGES // 4)


def _run(model: Path, data: Path, out: Path, *extra: str, env: dict[str, str]) -> Any:
    return run_cli(
        "run",
        str(model),
        "--data",
        str(data),
        "--modes",
        MODES,
        "--preprocess",
        "unit",
        "--latency-runs",
        "10",
        "--threads",
        "1",
        *extra,
        "--out",
        str(out),
        home=out.parent,
        env=env,
    )


@pytest.fixture(scope="module")
def local_run(
    tiny_models: dict[str, Path], images: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("cluster_local") / "run"
    done = _run(tiny_models["saved_model"], images, out, env=_clean_env())
    assert done.returncode in (0, 1), done.stderr[-3000:]
    return out


def _assert_same_as_local(local: Path, other: Path) -> None:
    """Every file the run wrote is byte-identical, and report.json's numbers are equal."""
    files = {p.name for p in local.iterdir() if p.is_file() and not TIMING.search(p.name)}
    assert files == {p.name for p in other.iterdir() if p.is_file() and not TIMING.search(p.name)}
    files -= RUN_RECORDS
    assert any(name.endswith(".probs.npy") for name in files)
    for name in sorted(files):
        assert (other / name).read_bytes() == (local / name).read_bytes(), name
    reports = [json.loads((run / "report.json").read_text()) for run in (local, other)]
    numbers = [
        {v["name"]: {k: x for k, x in v.items() if not TIMING.search(k) and k not in PROVENANCE}
         for v in report["variants"]}
        for report in reports
    ]  # fmt: skip
    assert numbers[1] == numbers[0]
    assert reports[1]["dataset"] == reports[0]["dataset"]


# -- two nodes on loopback, one killed mid-pass ---------------------------------------------------


@dataclass
class TwoNodes:
    cluster: Any  # ray.cluster_utils.Cluster
    worker: Any  # the second node (ray._private.node.Node)

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def shard_actors(self) -> dict[int, str]:
        """Ray's own actor table (the GCS): the node id of each shard actor, by its pid."""
        table = self.cluster.global_state.actor_table(None)
        return {
            int(info["Pid"]): info["Address"]["NodeID"]
            for info in table.values()
            # Ray Data runs the ShardEvaluator in its _MapWorker actors; nothing else here does.
            if "MapWorker" in info["ActorClassName"] and info["Pid"]
        }

    def batches_run(self) -> dict[str, int]:
        """Batches each node has started, from its shard actors' logs in Ray's session folder
        (the slow fault logs one line per batch)."""
        logs = Path(self.cluster.head_node.get_session_dir_path()) / "logs"
        found: dict[str, int] = {}
        for pid, node in self.shard_actors().items():
            for log in logs.glob(f"worker-*-{pid}.err"):
                count = log.read_text(errors="replace").count("fault: slow shard")
                found[node] = found.get(node, 0) + count
        return found


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[TwoNodes]:
    from ray.cluster_utils import Cluster

    before = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # read by the nodes' processes as they start
    Path("/tmp/ray").mkdir(exist_ok=True)  # where Cluster writes the head's address
    cluster = Cluster(
        initialize_head=True, head_node_args={"node_ip_address": "127.0.0.1", "num_cpus": 1}
    )
    try:
        worker = cluster.add_node(node_ip_address="127.0.0.1", num_cpus=1)
        cluster.wait_for_nodes()
        yield TwoNodes(cluster, worker)
    finally:
        cluster.shutdown()
        if before is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = before


def _start_on_two_nodes(two_nodes: TwoNodes, model: Path, images: Path, home: Path) -> Any:
    """The CLI on the two nodes, each batch a second longer, in its own process group."""
    env = _clean_env(RAY_AUTH_MODE="disabled", RAY_NODE_IP_ADDRESS="127.0.0.1",
                     QUANTLENS_FAULT="slow@shard", QUANTLENS_HOME=str(home))  # fmt: skip
    command = [sys.executable, "-m", "core", "run", str(model), "--data", str(images),
               "--modes", MODES, "--preprocess", "unit", "--latency-runs", "10",
               "--threads", "1", "--engine", "ray", "--ray-address", two_nodes.address,
               "--out", str(home / "run")]  # fmt: skip
    return subprocess.Popen(command, cwd=REPO, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip


def _stop(cli: Any) -> None:
    """The CLI, its supervisor and its worker (the Ray driver): their process group."""
    if cli.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(cli.pid, signal.SIGKILL)
        cli.wait(timeout=30)


def test_without_an_address_the_run_uses_a_private_ray_beside_a_running_head(
    two_nodes: TwoNodes, tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    """The two-node head above is this machine's "current" Ray (/tmp/ray names it): a run
    without --ray-address must not join it (Ray's own default would), but start a local Ray
    sized to the machine and stop it at the end, even when the run folder is deep (the
    worker's TMPDIR is inside it; Ray's socket paths must stay short). The only test that
    starts a private local Ray."""
    out = tmp_path / ("a-long-folder-name-" * 4) / "run"
    done = _run(tiny_models["saved_model"], tiny_data, out, "--engine", "ray", env=_clean_env())
    assert done.returncode in (0, 1), done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    engine = report["engine"]
    assert engine["address"] is None and engine["cpus"] == os.cpu_count()
    assert "127.0.0.1" not in engine["nodes"]  # not the loopback cluster's nodes
    assert {v["name"]: v["status"] for v in report["variants"]} == dict.fromkeys(
        ("float32", *MODES.split(",")), "done"
    )


def test_two_nodes_share_the_pass_and_a_node_killed_mid_pass_leaves_the_local_numbers(
    two_nodes: TwoNodes, local_run: Path, tiny_models: dict[str, Path], images: Path,
    tmp_path: Path,
) -> None:  # fmt: skip
    """Both nodes bound to 127.0.0.1 (Ray would dial this machine's other interface, where
    nobody listens), RAY_NODE_IP_ADDRESS in the CLI's environment: batches run on both nodes
    (Ray's actor table and its workers' logs). Node 2 is then killed mid-pass: the run
    notices, stops the pass, runs the batches that did not come back on the head, and ends
    with every number and file of the local engine; report.json says which node returned
    which batches and which node was lost. Kills node 2: runs last."""
    head_id, worker_id = two_nodes.cluster.head_node.node_id, two_nodes.worker.node_id
    cli = _start_on_two_nodes(two_nodes, tiny_models["saved_model"], images, tmp_path)
    killed = False
    try:
        deadline = time.monotonic() + 400
        while cli.poll() is None and not killed:
            assert time.monotonic() < deadline, "the pass never ran on both nodes"
            time.sleep(0.5)
            started = two_nodes.batches_run()
            # Node 2 has started its third batch (so finished two) and the head one: kill it.
            if started.get(worker_id, 0) >= 3 and started.get(head_id, 0) >= 1:
                two_nodes.cluster.remove_node(two_nodes.worker, allow_graceful=False)
                killed = True
        assert killed, "the run ended before node 2 had run batches"
        try:
            # Bounded: the run notices in seconds and re-runs what node 2 held on the head.
            _, stderr = cli.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail("the run still waits 120 s after node 2 was killed")
        ran = two_nodes.batches_run()
    finally:
        _stop(cli)
    assert cli.returncode in (0, 1), stderr[-3000:]
    out = tmp_path / "run"
    _assert_same_as_local(local_run, out)
    report = json.loads((out / "report.json").read_text())
    engine = report["engine"]
    assert engine["address"] == two_nodes.address and engine["nodes"] == ["127.0.0.1"] * 2
    assert engine["nodes_lost"] == [worker_id]
    # Every batch came back once, from the node whose actor ran it (each asks Ray which node
    # it runs on): no node returned more batches than Ray's records say it started, node 2
    # nothing after it was killed, and the head the rest.
    batches = engine["batches_by_node"]
    assert set(batches) <= {head_id, worker_id} and batches.get(head_id, 0) >= 1, batches
    assert batches.get(worker_id, 0) <= ran[worker_id] and batches[head_id] <= ran[head_id], (
        batches,
        ran,
    )
    assert sum(batches.values()) == -(-report["dataset"]["num_samples"] // 32)
    # Shown by `pytest -rP`: which node ran how many batches.
    sys.stderr.write(
        f"batches: head {batches[head_id]}, node 2 {batches.get(worker_id, 0)} (killed)\n"
    )


# -- a cluster that does not answer ---------------------------------------------------------------


@contextlib.contextmanager
def _silent_server() -> Iterator[int]:
    """A port that accepts connections and never says a word, as a wedged head would."""
    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.5)
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for connection in held:
            connection.close()
        server.close()


def test_a_cluster_that_does_not_answer_fails_the_run_within_the_connect_timeout(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    with _silent_server() as port:
        address = f"127.0.0.1:{port}"
        done = _run(tiny_models["saved_model"], tiny_data, out, "--engine", "ray",
                    "--ray-address", address, "--ray-connect-timeout", "5",
                    env=_clean_env())  # fmt: skip
        ended = time.time()
    events = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    assert done.returncode == 2, done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-3000:]
    assert re.search(
        rf"the Ray cluster at {re.escape(address)} did not answer within 5 s \(Ray tried "
        rf"[0-9.]+:{port}\);.*--ray-node-ip or RAY_NODE_IP_ADDRESS, raise --ray-connect-timeout",
        errors[0],
    ), errors[0]
    # Bounded: from the last step before the connect to the CLI's end, the limit plus 10 s
    # (and 10 s for the CLI to notice on a busy machine); Ray alone would retry for minutes.
    before_connect = max(e["time"] for e in events if e.get("step") != "failed")
    assert ended - before_connect < 5 + 10 + 10
    # Nothing left running: no process of this run (the worker) nor a Ray process it started.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert str(out) not in ps.stdout


# -- the README's recipe, as written --------------------------------------------------------------


def _readme_recipe() -> list[str]:
    """The commands of the README's "Running on a cluster" block, comments left out."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Running on a cluster", 1)[1]
    block = section.split("```", 2)[1]
    return [ln.strip() for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]


def test_the_readmes_cluster_recipe_works_as_written(
    local_run: Path, tiny_models: dict[str, Path], images: Path, tmp_path: Path
) -> None:
    """On a clean Ray configuration (a HOME without ~/.ray), the README's commands in order:
    token authentication, a head and a second node on this machine, the run on them. Only
    what cannot be written for every machine is filled in: the venv, HEAD_IP (127.0.0.1), the
    port, and ports and a temp folder that keep two nodes of one machine apart. Without
    RAY_AUTH_MODE the same run fails in one line that names the cause."""
    home = tmp_path / "home"
    home.mkdir()
    temp_dir = Path(tempfile.mkdtemp(prefix="qlr", dir="/tmp"))  # Ray's sockets: a short path
    port = _free_port()
    env = _clean_env(HOME=str(home))
    groups: list[int] = []
    recipe = _readme_recipe()
    ran: list[str] = []
    try:
        for line in recipe:
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").partition("=")
                env[name] = value
                ran.append(line)
            elif line.startswith(".venv/bin/ray "):
                words = line.split()[1:]
                words = [w.replace("HEAD_IP:6379", f"127.0.0.1:{port}") for w in words]
                words = [str(port) if w == "6379" else w for w in words]
                if words[0] == "start":
                    words += _one_machine_flags(temp_dir, head="--head" in words)
                started = subprocess.Popen(
                    [*RAY, *words], env=env, text=True, stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )  # fmt: skip
                groups.append(started.pid)
                output, _ = started.communicate(timeout=180)
                assert started.returncode == 0, output[-3000:]
                ran.append(line)
            elif "--ray-address" in line:
                assert line == ("python -m core run MODEL --data DATA --modes float16,int8 "
                                "--engine ray --ray-address HEAD_IP:6379")  # fmt: skip
                address = f"127.0.0.1:{port}"
                refused = _run(tiny_models["saved_model"], images, tmp_path / "refused",
                               "--engine", "ray", "--ray-address", address,
                               env={k: v for k, v in env.items() if k != "RAY_AUTH_MODE"})  # fmt: skip
                out = tmp_path / "run"
                done = _run(tiny_models["saved_model"], images, out, "--engine", "ray",
                            "--ray-address", address, env=env)  # fmt: skip
                ran.append(line)
                break
        assert ran == recipe[: len(ran)] and len(ran) == 5, ran
        assert (home / ".ray" / "auth_token").is_file()  # made by the recipe, not the test
        assert done.returncode in (0, 1), done.stderr[-3000:]
        _assert_same_as_local(local_run, out)
        engine = json.loads((out / "report.json").read_text())["engine"]
        assert len(engine["nodes"]) == 2 and engine["cpus"] == 2
        assert refused.returncode == 2, refused.stderr[-3000:]
        errors = [ln for ln in refused.stderr.splitlines() if ln.startswith("error:")]
        assert errors == [
            f"error: the Ray cluster at {address} requires token authentication "
            "(InvalidAuthToken); set RAY_AUTH_MODE=token where QuantLens runs (the CLI's or the "
            "dashboard server's environment), with the cluster's token in ~/.ray/auth_token or "
            "RAY_AUTH_TOKEN (`ray get-auth-token` on its head prints it), and run again"
        ]
    finally:
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _one_machine_flags(temp_dir: Path, *, head: bool) -> list[str]:
    """What keeps a second node of the same machine off the first one's fixed ports."""
    flags = ["--num-cpus", "1", "--disable-usage-stats",
             "--dashboard-agent-listen-port", str(_free_port()),
             "--metrics-export-port", str(_free_port()),
             "--runtime-env-agent-port", str(_free_port())]  # fmt: skip
    if head:
        flags += ["--temp-dir", str(temp_dir), "--include-dashboard", "false",
                  "--dashboard-port", str(_free_port()),
                  "--ray-client-server-port", str(_free_port())]  # fmt: skip
    return flags
