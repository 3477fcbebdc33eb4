"""`--engine` and `--ray-address` before any model work: parsing, refusals, and the reproduce
command (no TensorFlow, no Ray cluster: these run in the fast suite)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from core.cli import main
from core.engine.pipeline import reproduce_command
from core.engine.ray_engine import ClusterUnavailable, _check_reachable, _loopback_node
from core.errors import QuantLensError
from core.types import JobSpec


def test_ray_address_without_the_ray_engine_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = tmp_path / "model.keras", tmp_path / "data.csv"
    model.write_bytes(b"x")
    data.write_text("filepath,label\n", encoding="utf-8")
    code = main(["run", str(model), "--data", str(data), "--ray-address", "10.0.0.5:6379"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert (
        err == "error: --ray-address 10.0.0.5:6379 needs --engine ray; add it, or drop the address"
    )


def test_unknown_engine_is_refused_by_the_parser(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["run", "m", "--data", "d", "--engine", "spark"])
    assert stop.value.code == 2
    assert "invalid choice: 'spark'" in capsys.readouterr().err


def test_a_closed_port_is_named_in_one_line() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    with pytest.raises(ClusterUnavailable) as refused:
        _check_reachable(address)
    message = str(refused.value)
    assert message.startswith(f"cannot reach the Ray cluster at {address} (")
    assert "ray start --head" in message and "\n" not in message


@pytest.mark.parametrize("address", ["10.0.0.5", "head:port", ":6379x"])
def test_an_address_without_a_port_says_the_form(address: str) -> None:
    with pytest.raises(ClusterUnavailable, match="is not HOST:PORT"):
        _check_reachable(address)


def test_the_engine_is_part_of_the_job_and_its_command() -> None:
    job = JobSpec(model_path="/m", data_path="/d", engine="ray", ray_address="10.0.0.5:6379")
    assert JobSpec.from_dict(job.to_dict()) == job
    command = reproduce_command(job)
    assert command.endswith("--engine ray --ray-address 10.0.0.5:6379")
    local = reproduce_command(JobSpec(model_path="/m", data_path="/d"))
    assert "--engine" not in local and "--ray-address" not in local


def test_a_calibration_sweep_on_the_ray_engine_is_accepted(tmp_path: Path) -> None:
    """The sweep runs on Ray (its points quantize as Ray tasks): the options make a job."""
    from core.cli import _job_from_args, _parser

    (tmp_path / "m.keras").write_bytes(b"")
    (tmp_path / "d.csv").write_text("filepath,label\n", encoding="utf-8")
    args = _parser().parse_args(
        ["run", str(tmp_path / "m.keras"), "--data", str(tmp_path / "d.csv"), "--engine", "ray",
         "--calibration-sweep", "4,8", "--sweep-seeds", "2"]
    )  # fmt: skip
    job = _job_from_args(args)
    assert (job.engine, job.calibration_sweep, job.sweep_seeds) == ("ray", (4, 8), 2)


def _ray_job(tmp_path: Path, *extra: str) -> JobSpec:
    from core.cli import _job_from_args, _parser

    (tmp_path / "m.keras").write_bytes(b"")
    (tmp_path / "d.csv").write_text("filepath,label\n", encoding="utf-8")
    args = _parser().parse_args(
        ["run", str(tmp_path / "m.keras"), "--data", str(tmp_path / "d.csv"), *extra]
    )
    return _job_from_args(args)


def test_the_node_address_and_connect_limit_reach_the_job_and_its_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--ray-node-ip, else RAY_NODE_IP_ADDRESS in the CLI's environment, travels in job.json to
    the worker (which hands it to ray.init), and the reproduce command repeats both options."""
    monkeypatch.delenv("RAY_NODE_IP_ADDRESS", raising=False)
    job = _ray_job(tmp_path, "--engine", "ray", "--ray-address", "127.0.0.1:6379",
                   "--ray-node-ip", "127.0.0.1", "--ray-connect-timeout", "12.5")  # fmt: skip
    assert (job.ray_node_ip, job.ray_connect_timeout_s) == ("127.0.0.1", 12.5)
    assert JobSpec.from_dict(job.to_dict()) == job
    assert reproduce_command(job).endswith(
        "--engine ray --ray-address 127.0.0.1:6379 --ray-node-ip 127.0.0.1 "
        "--ray-connect-timeout 12.5"
    )
    monkeypatch.setenv("RAY_NODE_IP_ADDRESS", "10.0.0.7")
    from_env = _ray_job(tmp_path, "--engine", "ray", "--ray-address", "10.0.0.5:6379")
    assert (from_env.ray_node_ip, from_env.ray_connect_timeout_s) == ("10.0.0.7", 30.0)
    assert "--ray-connect-timeout" not in reproduce_command(from_env)
    assert _ray_job(tmp_path).ray_node_ip is None  # the local engine has no node address


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ray-node-ip", "127.0.0.1"], "--ray-node-ip 127.0.0.1 needs --engine ray"),
        (["--engine", "ray", "--ray-connect-timeout", "0"], "--ray-connect-timeout is a number"),
    ],
)
def test_ray_options_that_cannot_work_are_refused(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    with pytest.raises(QuantLensError, match=message):
        _ray_job(tmp_path, *extra)


def test_a_loopback_cluster_is_joined_from_loopback() -> None:
    """Every node bound to 127.0.0.1 and a loopback address: join as 127.0.0.1, where Ray
    would move the address to this machine's other interface (nobody listens there)."""
    assert _loopback_node("127.0.0.1:6379", ["127.0.0.1", "127.0.0.1"]) == "127.0.0.1"
    assert _loopback_node("localhost:6379", ["127.0.0.1"]) == "127.0.0.1"
    assert _loopback_node("127.0.0.1:6379", ["127.0.0.1", "10.0.0.5"]) is None
    assert _loopback_node("10.0.0.5:6379", ["127.0.0.1"]) is None
    assert _loopback_node("127.0.0.1:6379", []) is None


def test_a_node_whose_raylet_refuses_connections_is_lost_at_once() -> None:
    """A killed node's raylet port refuses connections seconds before the GCS lists the node
    dead: that is enough to stop the pass. A port that answers is not lost, and without a GCS
    to ask (no Ray session here) nothing else is decided."""
    from core.engine.ray_engine import _gone, _Node

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)
        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            closed = probe.getsockname()[1]
        nodes = {
            "killed": _Node(cpus=1, host="127.0.0.1", port=closed),
            "alive": _Node(cpus=1, host="127.0.0.1", port=listening.getsockname()[1]),
        }
        assert _gone(nodes) == {"killed"}
