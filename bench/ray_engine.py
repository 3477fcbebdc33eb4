"""Benchmark: the Ray engine's overhead against the local engine, on one machine.

Runs `python -m core run` twice on the same model and N generated JPEG files, modes
float16,int8: once with `--engine local`, once with `--engine ray` (a local Ray started by the
run, one worker per core). It prints both wall times and their ratio (ray / local): on one
machine Ray cannot win, so the ratio is its overhead: starting Ray, a TensorFlow import and
model load per worker, and moving outputs through the object store. It also checks that both
runs report the same agreement.

(Named ray_engine.py, not ray.py: a script's folder comes first on sys.path and would shadow
the `ray` package.) The machine is shared and noisy: only the ratio measured in one run means
something. Usage: python bench/ray_engine.py [--images 3000] [--size 96] [--two-nodes]

With --two-nodes it also runs on a cluster of two nodes of this machine (a head and a second
raylet, both on 127.0.0.1, one CPU each, made with ray.cluster_utils.Cluster) through
--ray-address, prints that ratio too, and which node ran how many of the evaluation batches
(report.json's engine.batches_by_node: each worker asks Ray which node it runs on).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline import make_images, make_model  # bench/pipeline.py: the same model and images

REPO = Path(__file__).resolve().parents[1]
MODES = "float16,int8"


def run(
    engine: str, model: Path, data: Path, home: Path, *extra: str
) -> tuple[float, dict[str, float]]:
    """Wall seconds of one `core run` and its top-1 agreement per variant."""
    out = home / f"run-{engine}"
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "core",
            "run",
            str(model),
            "--data",
            str(data),
            "--modes",
            MODES,
            "--engine",
            engine,
            *extra,
            "--latency-runs",
            "20",
            "--out",
            str(out),
        ],
        cwd=REPO,
        env={
            **os.environ,
            "QUANTLENS_HOME": str(home),
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "RAY_AUTH_MODE": "disabled",  # the two-node cluster below runs without a token
        },
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"{engine} run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    report = json.loads((out / "report.json").read_text())
    return seconds, {v["name"]: v["top1_agreement_pct"] for v in report["variants"]}


def on_two_nodes(model: Path, data: Path, home: Path) -> tuple[float, dict[str, float], str]:
    """The run on a head and a second raylet of this machine; its seconds, agreement, and how
    many evaluation batches each node finished (Ray's task records, via its dashboard)."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    Path("/tmp/ray").mkdir(exist_ok=True)
    from ray.cluster_utils import Cluster

    cluster: Any = Cluster(  # untyped in Ray
        initialize_head=True, head_node_args={"node_ip_address": "127.0.0.1", "num_cpus": 1}
    )
    try:
        second = cluster.add_node(node_ip_address="127.0.0.1", num_cpus=1)
        cluster.wait_for_nodes()
        seconds, agreement = run("ray", model, data, home, "--ray-address", cluster.address)
        names = {cluster.head_node.node_id: "head", second.node_id: "node 2"}
    finally:
        cluster.shutdown()
    report = json.loads((home / "run-ray" / "report.json").read_text())
    done = report["engine"]["batches_by_node"]
    return seconds, agreement, ", ".join(f"{names.get(n, n)}: {k}" for n, k in done.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--two-nodes", action="store_true", help="also two nodes on loopback")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="quantlens-bench-ray-") as tmp:
        root = Path(tmp)
        model = make_model(root, args.size)
        data = make_images(root, args.images, args.size)
        local_s, local_agreement = run("local", model, data, root / "local")
        ray_s, ray_agreement = run("ray", model, data, root / "ray")
        if args.two_nodes:
            two_s, two_agreement, batches = on_two_nodes(model, data, root / "two-nodes")
    print(
        f"images: {args.images} at {args.size}x{args.size}, modes {MODES}, {os.cpu_count()} cores"
    )
    print(f"local engine:  {local_s:7.1f} s")
    print(f"ray engine:    {ray_s:7.1f} s  (local Ray, {os.cpu_count()} workers)")
    print(f"overhead ratio (ray / local): {ray_s / local_s:.2f}")
    same = local_agreement == ray_agreement
    print(f"same agreement on both engines: {same} {ray_agreement}")
    if args.two_nodes:
        print(f"two nodes:     {two_s:7.1f} s  (head + second raylet on 127.0.0.1, 1 CPU each)")
        print(f"overhead ratio (two nodes / local): {two_s / local_s:.2f}")
        print(f"evaluation batches returned per node: {batches}")
        print(f"same agreement on two nodes: {two_agreement == local_agreement}")


if __name__ == "__main__":
    main()
