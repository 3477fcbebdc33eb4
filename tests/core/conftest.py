"""Tiny real models and image sets, built by the tests (conv + batch norm + depthwise, so fusion
and quantization really happen)."""

from __future__ import annotations

import contextlib
import csv
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.session_builds import build_once

TINY_SIZE = 16
TINY_CLASSES = 4


def build_tiny_model(*, softmax: bool = True, seed: int = 0, spatial: int | None = TINY_SIZE):  # type: ignore[no-untyped-def]
    """A few-KB MobileNet-style classifier with deterministic random weights."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    # Names pinned to what Keras gives them in a fresh process: Keras numbers unnamed layers
    # per process, so after another test built a model in-process, `dense` would be `dense_3`
    # and every test that names a layer (keep=dense) would name one that is not there.
    inputs = keras.Input((spatial, spatial, 3), name="image")
    x = layers.Conv2D(24, 3, padding="same", use_bias=False, name="conv2d")(inputs)
    x = layers.BatchNormalization(name="batch_normalization")(x)
    x = layers.ReLU(6.0, name="re_lu")(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="depthwise_conv2d")(x)
    x = layers.BatchNormalization(name="batch_normalization_1")(x)
    x = layers.ReLU(6.0, name="re_lu_1")(x)
    x = layers.Conv2D(48, 1, use_bias=False, name="conv2d_1")(x)
    x = layers.BatchNormalization(name="batch_normalization_2")(x)
    x = layers.ReLU(6.0, name="re_lu_2")(x)
    x = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
    x = layers.Dense(64, activation="relu", name="dense")(x)
    outputs = layers.Dense(TINY_CLASSES, activation="softmax" if softmax else None, name="scores")(
        x
    )
    return keras.Model(inputs, outputs)


def write_tiny_images(root: Path, *, per_class: int = 6, seed: int = 0) -> Path:
    """Class-coloured noise images in folders plus a CSV (filepath,label); returns the CSV."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in range(TINY_CLASSES):
        for i in range(per_class):
            base = np.zeros((20, 20, 3), dtype=np.float64)
            base[..., label % 3] = 160 + 60 * (label // 3)
            pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
            relpath = f"images/c{label}/{i}.png"
            (root / relpath).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / relpath)
            rows.append((relpath, label))
    csv_path = root / "data.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "label"])
        writer.writerows(rows)
    return csv_path


def unlabelled_copy(csv_path: Path, dest: Path) -> Path:
    """The CSV's images copied to `dest`, listed without labels; returns the new CSV.

    For runs that are not about accuracy: the tiny model's random weights are near chance on
    any labels, and then no variant may PASS (a meaningless run), so such a run exits 1.
    """
    with csv_path.open(encoding="utf-8", newline="") as f:
        relpaths = [row["filepath"] for row in csv.DictReader(f)]
    for rel in relpaths:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(csv_path.parent / rel, dest / rel)
    out = dest / "unlabelled.csv"
    out.write_text("filepath\n" + "".join(f"{rel}\n" for rel in relpaths), encoding="utf-8")
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same tiny model as `.keras` and as a SavedModel, plus a logits-output SavedModel
    (built once per test run, whatever the number of xdist workers)."""

    def build(root: Path) -> None:
        model = build_tiny_model()
        model.save(root / "tiny.keras")
        model.export(str(root / "tiny_saved_model"), verbose=False)
        logits = build_tiny_model(softmax=False, seed=1)
        logits.export(str(root / "logits_saved_model"), verbose=False)

    root = build_once(tmp_path_factory, "tiny_models", build)
    return {
        "keras": root / "tiny.keras",
        "saved_model": root / "tiny_saved_model",
        "logits_saved_model": root / "logits_saved_model",
    }


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CSV data set of 24 labelled PNG images; returns the CSV path."""
    return write_tiny_images(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh QUANTLENS_HOME for one test (store, runs, conversion cache)."""
    home = tmp_path / "workspace"
    monkeypatch.setenv("QUANTLENS_HOME", str(home))
    return home


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """One real Ray head on 127.0.0.1 with 2 CPUs for the whole session: every test that
    needs only "a Ray" joins it, the CLI through --ray-address, in-process calls through
    `ray_connected`. Starting Ray costs seconds to tens of seconds on a busy machine; only the
    tests about how a run starts, joins or loses a Ray start their own.

    `ray start --head` in its own process group and temp folder, every port chosen free (a
    test's own cluster may run beside it), stopped with its whole group at the end."""
    temp_dir = Path(tempfile.mkdtemp(prefix="qls", dir="/tmp"))  # Ray's sockets: a short path
    port = free_port()
    flags = ["--port", str(port), "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
             "--include-dashboard", "false", "--disable-usage-stats",
             "--temp-dir", str(temp_dir)]  # fmt: skip
    for flag in ("--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port",
                 "--metrics-export-port", "--runtime-env-agent-port"):  # fmt: skip
        flags += [flag, str(free_port())]
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", *flags],
        # Ray 2.60 turns token authentication on by default; the session's Ray needs none.
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert head.poll() is None, "ray start --head ended"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert time.monotonic() < deadline, f"ray start --head did not listen on {port}"
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        # Ray's workers run in groups of their own, and one busy in TensorFlow can outlive its
        # raylet (seen: a 700 MB MapWorker left after the suite): stop the whole tree.
        family = descendants(head.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        head.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def descendants(root: int) -> list[int]:
    """Every live process under `root` (children, their children, ...), from /proc."""
    from core import posix

    parents: dict[int, int] = {}
    for entry in posix.PROC.iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(IndexError, ValueError):
                parents[int(entry.name)] = int(posix.stat_fields(int(entry.name))[1])  # field 4
    found: list[int] = []
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


@pytest.fixture(scope="module")
def ray_connected(ray_address: str) -> Iterator[str]:
    """This test process joined to the session's Ray for one module's in-process calls,
    through QuantLens's own connect (which keeps the loopback address); left at its end, so
    no Ray state outlives the module."""
    from core.engine.ray_engine import ray_session

    with ray_session(ray_address, connect_timeout_s=120):
        yield ray_address
