"""Evaluate the original and every converted variant on a Ray cluster, shard by shard.

The head (the job's worker process) converts; this module only evaluates. The model and each
variant's `.tflite` go into Ray's object store once; Ray Data reads the sample list in chunks
of `BATCH` and `map_batches` decodes each chunk with the one decoder
(core.inputs.images.decode_image) and the preset, then runs the original and every variant on it.
The raw outputs come back in sample order; the head turns them into probabilities, metrics and
files exactly as the local engine does, so the numbers are the local engine's.

Chunks are the local engine's batches (the same 32 samples in the same order), so the original
sees the same batches on both engines. A worker that dies re-runs its chunk (Ray restarts the
actor and retries the task); a variant that kills its worker every time is isolated by running
each variant in a pass of its own, and fails alone.

Sweeps fan out as Ray tasks: the auto-fix search's keep-float candidates
(`keep_float_candidates`) and the calibration sweep's points (`quantize_as_tasks`).
"""

from __future__ import annotations

import io
import logging
import os
import signal
import socket
import tarfile
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import AbstractContextManager, closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.engine.faults import FAULT_ENV, FAULT_ONCE_ENV
from core.engine.stages.files import BATCH  # the local engine's decode/reference batch
from core.errors import QuantLensError
from core.metrics.latency import usable_cpus
from core.reporting.sections.engine_info import EngineInfo
from core.types import RAY_NODE_IP_ENV as NODE_IP_ENV
from core.types import JobSpec, Preset, Sample, SkippedSample, VariantSpec

RETRIES = 2  # restarts of a dead actor, and re-runs of its chunk, before a pass gives up
CONNECT_TIMEOUT_S = 5.0  # one probe of the address (a TCP connect, one GCS call)
DEFAULT_CONNECT_TIMEOUT_S = 30.0  # connect to the cluster's first answer (--ray-connect-timeout)
AUTH_MODE_ENV = "RAY_AUTH_MODE"  # Ray's switch for token authentication
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
# During a cluster pass the head checks the cluster's address every WATCH_INTERVAL_S; silent
# for LOST_AFTER_S, the cluster is lost (Ray itself would wait 60 s, then kill the process).
WATCH_INTERVAL_S = 1.0
LOST_AFTER_S = 8.0
# A node of the cluster lost during a pass: the pass is stopped and the batches that did not
# come back run again on the nodes left, at most this many times in one evaluation.
MAX_NODE_LOSSES = 4
# A fresh pass on the nodes left waits at most this long for its actors to start (each loads
# TensorFlow and the model); Ray Data's default waits for ever.
FRESH_PASS_ACTOR_WAIT_S = 180
LOCAL_RAY_TEMP = "/tmp/ray"
# Environment the Ray workers must see as the head does: TensorFlow's switches, read once at
# import (the job's worker turns oneDNN's ops off; left on, the original's outputs differ from
# the local engine's in the last bits), and test-only fault injection.
FORWARDED_ENV = ("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL", FAULT_ENV, FAULT_ONCE_ENV)
ShardProgress = Callable[[int, int], None]  # (samples done, samples in total)


class ClusterUnavailable(QuantLensError):
    """The Ray cluster named by --ray-address cannot be reached, or was lost during the run."""


@dataclass(frozen=True)
class ReferenceSource:
    """Where the original model is and how to load it (core.engine.models.load_reference)."""

    path: Path
    trusted: bool = False
    signature_key: str | None = None
    input_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class ClusterInfo:
    """The Ray cluster a run used, for report.json's `engine`."""

    address: str | None  # None: a local Ray started for this run
    nodes: tuple[str, ...]  # IP addresses of the alive nodes
    cpus: int
    head_node: str  # the node the job ran on: conversions and latency

    def engine_info(self) -> EngineInfo:
        return EngineInfo(
            name="ray",
            address=self.address,
            nodes=self.nodes,
            cpus=self.cpus,
            latency_node=self.head_node,
        )


@dataclass
class Evaluation:
    """Raw outputs in sample order: the samples that decoded, and those skipped with a reason.

    `variants` maps a variant name to its raw outputs [N, C] (aligned with `kept`); a variant
    that failed on the cluster is in `errors` instead.
    """

    kept: list[Sample]
    skipped: list[SkippedSample]
    reference: np.ndarray
    variants: dict[str, np.ndarray] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    passes: int = 1  # Ray Data passes over the images: more than 1 when a variant was isolated
    # Ray node id -> the batches (of BATCH samples) whose outputs that node returned, in the
    # pass that evaluated the original; report.json's engine.batches_by_node.
    batches_by_node: dict[str, int] = field(default_factory=dict)
    # Ray node ids lost during the passes (their unfinished batches ran again on the others).
    nodes_lost: list[str] = field(default_factory=list)


def _check_reachable(address: str) -> None:
    """Fail in seconds on an address nobody listens on (ray.init would retry for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterUnavailable(
            f"--ray-address {address!r} is not HOST:PORT; give the address `ray start --head` "
            "printed, such as 10.0.0.5:6379"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ClusterUnavailable(
            f"cannot reach the Ray cluster at {address} ({exc.strerror or exc}); start it with "
            "`ray start --head` on that machine and pass the address it prints, or leave out "
            "--ray-address to run on a local Ray"
        ) from None


def _answers(address: str) -> bool:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            return True
    except (OSError, ValueError):
        return False


def lost_message(address: str) -> str:
    """The one line a run ends with when its cluster went away."""
    return (
        f"lost the Ray cluster at {address} during the evaluation: nobody answers there any "
        "more; restart it (`ray start --head` on that machine, check with `ray status --address "
        f"{address}`) and run again, or use --engine local"
    )


class _NodeLost(Exception):
    """A node the pass started with left the cluster (raised in the main thread by the watch)."""


@contextmanager
def _watching(address: str | None, nodes: dict[str, _Node] | None = None) -> Iterator[None]:
    """Turn a cluster that stops answering into ClusterUnavailable, and the loss of one of
    `nodes` (by Ray node id) into _NodeLost, in this (the main) thread.

    A lost cluster leaves the head blocked in Ray for a minute, after which Ray ends the
    process from C++, which no `except` can catch; a lost node leaves Ray Data waiting, maybe
    for ever, for the actor it re-creates on a node whose CPUs the surviving actors hold. A
    watcher thread probes the address and the nodes' liveness in the GCS and interrupts the
    main thread with SIGUSR1, whose handler raises. The address is watched only for a cluster
    at an address (a local Ray ends with this process), and only on the main thread (the only
    one a signal handler runs on).
    """
    if (not address and not nodes) or threading.current_thread() is not threading.main_thread():
        yield
        return
    stop = threading.Event()
    lost = threading.Event()
    node_lost = threading.Event()
    main = threading.main_thread().ident

    def on_signal(signum: int, frame: object) -> None:
        if lost.is_set():
            raise ClusterUnavailable(lost_message(address or "this machine"))
        if node_lost.is_set():
            node_lost.clear()  # raised once: the pass stops, the caller runs what is left
            raise _NodeLost()

    def watch() -> None:
        silent_since: float | None = None
        while not stop.wait(WATCH_INTERVAL_S):
            if address and not _answers(address):
                silent_since = silent_since or time.monotonic()
                if time.monotonic() - silent_since >= LOST_AFTER_S and main is not None:
                    lost.set()
                    signal.pthread_kill(main, signal.SIGUSR1)
                    return
                continue
            silent_since = None
            if nodes and main is not None and _gone(nodes):
                node_lost.set()
                signal.pthread_kill(main, signal.SIGUSR1)
                return

    previous = signal.signal(signal.SIGUSR1, on_signal)
    watcher = threading.Thread(target=watch, name="ray-cluster-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join()
        signal.signal(signal.SIGUSR1, previous)


@dataclass(frozen=True)
class _Node:
    """An alive node of the cluster, as the GCS lists it: its CPUs and its raylet's address."""

    cpus: int
    host: str
    port: int


def _alive_nodes() -> dict[str, _Node]:
    """The cluster's alive nodes by Ray node id ({} when the GCS cannot be asked)."""
    try:
        table = _untyped_ray().nodes()
    except Exception:
        return {}
    return {
        str(n["NodeID"]): _Node(
            cpus=int(n.get("Resources", {}).get("CPU", 0)),
            host=str(n.get("NodeManagerAddress", "")),
            port=int(n.get("NodeManagerPort", 0)),
        )
        for n in table
        if n.get("Alive")
    }


def _gone(nodes: dict[str, _Node]) -> set[str]:
    """Those of `nodes` that left the cluster: the GCS lists them dead, or their raylet
    refuses connections (a killed node does at once; the GCS says so after its heartbeats
    time out, 10 to 30 s later). A GCS that cannot be asked is not a verdict."""
    listed = _alive_nodes()
    gone = set(nodes) - set(listed) if listed else set()
    for node_id, node in nodes.items():
        if node_id not in gone and _refuses(node.host, node.port):
            gone.add(node_id)
    return gone


def _refuses(host: str, port: int) -> bool:
    if not host or not port:
        return False
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:  # slow or unreachable is not proof: the GCS decides
        return False


def _runtime_env() -> dict[str, Any]:
    """Workers import QuantLens from the head's source tree and see its fault settings."""
    import core

    source_root = str(Path(core.__file__).resolve().parent.parent)
    env = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    path = os.pathsep.join(p for p in (source_root, os.environ.get("PYTHONPATH")) if p)
    return {"env_vars": {**env, "PYTHONPATH": path}}


@contextmanager
def ray_session(
    address: str | None,
    *,
    node_ip: str | None = None,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
) -> Iterator[ClusterInfo]:
    """Connect to exactly the cluster at `address`, or start a private local Ray sized to this
    machine; everything up to the cluster's first answer takes at most `connect_timeout_s`.

    `node_ip` (else RAY_NODE_IP_ADDRESS) is this machine's address in the cluster, as the
    operator bound it (`ray start --node-ip-address`). A session the caller already opened
    (ray.init in a test) is used as it is and left open.

    Raises:
        ClusterUnavailable: nobody answers at `address`, the cluster refuses this process's
            authentication, it does not answer in time, or Ray refuses to connect.
    """
    import ray

    # Ray Data reports usage to an actor on the cluster, even while failing a pass: with the
    # cluster gone that call blocks until Ray ends the process. QuantLens sends no usage data.
    os.environ.setdefault("RAY_DATA_USAGE_DISABLED", "1")
    owned = not ray.is_initialized()
    done = threading.Event()  # the session is over: the thread that started Ray may end
    if owned:
        node_ip = node_ip or os.environ.get(NODE_IP_ENV, "").strip() or None
        info = _connect(address, node_ip, connect_timeout_s, done)
    else:
        info = _cluster_info(address)
    try:
        yield info
    finally:
        if owned:
            ray.shutdown()
        done.set()


def job_session(job: JobSpec) -> AbstractContextManager[ClusterInfo]:
    """ray_session for a job: its --ray-address, --ray-node-ip and --ray-connect-timeout."""
    return ray_session(
        job.ray_address, node_ip=job.ray_node_ip, connect_timeout_s=job.ray_connect_timeout_s
    )


def _connect(
    address: str | None, node_ip: str | None, limit_s: float, done: threading.Event
) -> ClusterInfo:
    """ray.init and the cluster's first answer, on a thread this one stops waiting for after
    `limit_s`: Ray retries an address it cannot use for minutes (forever, for a loopback
    cluster it reaches at another interface), in C++ that nothing can interrupt. The thread
    is abandoned (the worker process ends with os._exit); should it connect after all, it
    disconnects at once, so nothing is left running.

    Once connected, the thread waits for `done` (the session's end): the processes of a local
    Ray die with the thread that started them (Ray ties them to it with PR_SET_PDEATHSIG)."""
    started = time.monotonic()
    if address:
        _check_reachable(address)
    lock = threading.Lock()
    outcome: dict[str, Any] = {}
    abandoned = False

    answered = threading.Event()  # the attempt has an outcome: the waiting thread goes on

    def attempt() -> None:
        try:
            info = _init(address, node_ip)
        except BaseException as exc:  # handed to the waiting thread, which raises it
            outcome["error"] = exc
            answered.set()
            return
        with lock:
            if abandoned:
                _untyped_ray().shutdown()
                return
            outcome["info"] = info
        answered.set()
        done.wait()

    thread = threading.Thread(target=attempt, name="ray-connect", daemon=True)
    quiet = _NotMainThreadWarning()
    logging.getLogger("ray._private.worker").addFilter(quiet)
    thread.start()
    # Not thread.join: once connected, the thread stays alive until the session ends.
    answered.wait(max(0.0, limit_s - (time.monotonic() - started)))
    logging.getLogger("ray._private.worker").removeFilter(quiet)
    with lock:
        if "error" in outcome:
            raise outcome["error"]
        if "info" not in outcome:
            abandoned = True
            raise ClusterUnavailable(_too_slow(address, node_ip, limit_s))
        info: ClusterInfo = outcome["info"]
    return info


class _NotMainThreadWarning(logging.Filter):
    """Drops Ray's warning that ray.init off the main thread sets no SIGTERM handler: the
    worker keeps its own (Ray's would end the job with sys.exit)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "SIGTERM handler is not set" not in record.getMessage()


def _init(address: str | None, node_ip: str | None) -> ClusterInfo:
    """Join the cluster at `address` (or start a private local Ray) and ask it who it is."""
    ray = _untyped_ray()

    if address and not address.startswith("ray://"):
        nodes = _probe(address)
        node_ip = node_ip or _loopback_node(address, nodes)
    with _loopback_kept(node_ip):
        try:
            ray.init(
                # "local", never None: None joins whatever head RAY_ADDRESS or /tmp/ray names.
                address=address or "local",
                num_cpus=None if address else usable_cpus(),
                include_dashboard=False if not address else None,
                # Ray's own default: the job's TMPDIR lies inside its run folder, too deep for
                # the Unix socket paths Ray puts under it (107 bytes at most).
                _temp_dir=None if address else LOCAL_RAY_TEMP,
                _node_ip_address=node_ip,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError ...
            if address and _is_auth_error(exc):
                raise ClusterUnavailable(_auth_message(address)) from None
            where = f"at {address}" if address else "on this machine"
            raise ClusterUnavailable(
                f"cannot start or join Ray {where} ({_first_line(exc)[:160]}); check "
                "the address and that the cluster runs the same Ray version"
            ) from None
    return _cluster_info(address)


def _probe(address: str) -> list[str]:
    """The addresses of the cluster's alive nodes, asked of its GCS at `address` as given.

    ray.init meets a refused token with 20 s of retries and "Failed to connect"; this one
    call hears InvalidAuthToken at once and names it.
    """
    gcs = _untyped_ray()._raylet.GcsClient
    try:
        nodes = gcs(address=address).get_all_node_info(timeout=CONNECT_TIMEOUT_S)
    except Exception as exc:
        if _is_auth_error(exc):
            raise ClusterUnavailable(_auth_message(address)) from None
        return []  # ray.init, which knows more ways to connect, says what is wrong
    return [str(n.node_manager_address) for n in nodes.values() if int(n.state) == 0]


def _is_auth_error(exc: BaseException) -> bool:
    text = f"{type(exc).__name__} {exc} {exc.__cause__}"
    return any(
        word in text for word in ("InvalidAuthToken", "AuthenticationError", "Unauthenticated")
    )


def _auth_message(address: str) -> str:
    if os.environ.get(AUTH_MODE_ENV, "").lower() == "token":
        return (
            f"the Ray cluster at {address} refused this machine's token (InvalidAuthToken); "
            "put the cluster's token (`ray get-auth-token` on its head prints it) in "
            "RAY_AUTH_TOKEN or ~/.ray/auth_token where QuantLens runs, and run again"
        )
    return (
        f"the Ray cluster at {address} requires token authentication (InvalidAuthToken); set "
        "RAY_AUTH_MODE=token where QuantLens runs (the CLI's or the dashboard server's "
        "environment), with the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN "
        "(`ray get-auth-token` on its head prints it), and run again"
    )


def _loopback_node(address: str, nodes: list[str]) -> str | None:
    """127.0.0.1 when `address` is loopback and every node of the cluster is bound there:
    Ray would otherwise move the address to this machine's other interface, where nobody
    listens (ray.cluster_utils.Cluster, a raylet bound to loopback)."""
    host = address.rpartition(":")[0]
    if host in LOOPBACK and nodes and all(n in LOOPBACK for n in nodes):
        return "127.0.0.1"
    return None


@contextmanager
def _loopback_kept(node_ip: str | None) -> Iterator[None]:
    """Keep a loopback node address (and cluster address) as given while ray.init runs.

    Ray replaces 127.0.0.1 with this machine's first interface address everywhere, except
    where clusters are off (its macOS/Windows switch, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER, read
    once at import): the switch is turned off for the connect only, and only for loopback.
    """
    if node_ip not in LOOPBACK:
        yield
        return
    constants = _untyped_ray()._private.ray_constants
    before = constants.ENABLE_RAY_CLUSTER
    constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = before


def _tried(address: str, node_ip: str | None) -> str:
    """The address Ray itself dials for `address` (it rewrites a loopback host)."""
    try:
        with _loopback_kept(node_ip):
            tried = _untyped_ray()._private.services.canonicalize_bootstrap_address(address)
    except Exception:
        return address
    return str(tried or address)


def _too_slow(address: str | None, node_ip: str | None, limit_s: float) -> str:
    if not address:
        return (
            f"a local Ray did not start within {limit_s:g} s; the machine may be busy: raise "
            "--ray-connect-timeout, or use --engine local"
        )
    node = f" as node {node_ip}" if node_ip else ""
    return (
        f"the Ray cluster at {address} did not answer within {limit_s:g} s (Ray tried "
        f"{_tried(address, node_ip)}{node}); if the cluster is bound to another interface "
        "(such as `ray start --node-ip-address 127.0.0.1`), give this machine's address there "
        "with --ray-node-ip or RAY_NODE_IP_ADDRESS, raise --ray-connect-timeout on a slow "
        "network, or use --engine local"
    )


def _untyped_ray() -> Any:
    """The ray module, for its calls that carry no type hints (mypy strict refuses them)."""
    import ray

    return ray


def _cluster_info(address: str | None) -> ClusterInfo:
    ray = _untyped_ray()

    nodes = tuple(sorted(n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")))
    cpus = int(ray.cluster_resources().get("CPU", 0))
    head = f"{socket.gethostname()} ({ray.util.get_node_ip_address()})"
    return ClusterInfo(address=address, nodes=nodes, cpus=cpus, head_node=head)


def model_bytes(path: Path) -> bytes:
    """The model as one blob for the object store: a `.keras` file, or a SavedModel folder as tar."""
    if path.is_file():
        return path.read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(path, arcname=path.name)
    return buffer.getvalue()


def _unpack_model(blob: bytes, name: str, folder: bool, target: Path) -> Path:
    if not folder:
        path = target / name
        path.write_bytes(blob)
        return path
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
        tar.extractall(target, filter="data")  # written by model_bytes; "data" refuses links out
    return target / name


class ShardEvaluator:
    """A Ray Data actor: loads the original and every variant once, then evaluates chunks."""

    def __init__(
        self,
        *,
        refs: list[Any],
        model_name: str,
        model_is_folder: bool,
        reference: ReferenceSource,
        variant_names: list[str],
        preset: str,
        image_shape: tuple[int, int, int],
    ) -> None:
        import tempfile

        import ray

        from core.engine.frameworks import skip_framework_extras

        skip_framework_extras()  # before this Ray worker process imports TensorFlow
        from core.engine.models import load_reference
        from core.engine.runtime import OriginalRunner, TFLiteRunner, evaluation_batch

        blobs = ray.get(refs)  # the model first, then each variant's .tflite
        # The model's files are needed only to load it: Ray ends a pool's actors without running
        # their finalizers, so a folder kept for the actor's life stayed behind on every node,
        # a copy of the user's model per run.
        with tempfile.TemporaryDirectory(prefix="quantlens-ray-") as folder:
            path = _unpack_model(blobs[0], model_name, model_is_folder, Path(folder))
            self.model = load_reference(
                path,
                trusted=reference.trusted,
                signature_key=reference.signature_key,
                input_size=reference.input_size,
            )
        # As many images per invoke as the local engine (stages.evaluate.tflite_outputs).
        batch = evaluation_batch(int(np.prod(image_shape)))
        self.runners = [
            (name, TFLiteRunner(blob, threads=1, name=f"{name}.tflite", batch=batch, preset=preset))
            for name, blob in zip(variant_names, blobs[1:], strict=True)
        ]
        self.original = OriginalRunner(self.model, preset=preset)
        self.shape = image_shape
        self.node = str(ray.get_runtime_context().get_node_id())  # where this actor runs

    def __call__(self, chunk: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from core.engine.faults import maybe_inject

        maybe_inject("shard")
        out: dict[str, list[Any]] = {"position": [], "reason": [], "node": []}
        for start, paths in zip(chunk["start"], chunk["paths"], strict=True):
            self._evaluate_chunk(int(start), [str(p) for p in paths], out)
        return {key: np.asarray(values) for key, values in out.items()}

    def _evaluate_chunk(self, start: int, paths: list[str], out: dict[str, list[Any]]) -> None:
        from core.errors import ImageDecodeError
        from core.inputs.images import decode_image

        height, width, channels = self.shape
        images: list[np.ndarray] = []
        decoded: list[int] = []
        for position, path in enumerate(paths, start=start):
            try:
                images.append(decode_image(path, height=height, width=width, channels=channels))
                decoded.append(position)
            except ImageDecodeError as exc:
                self._append(out, [position], [str(exc)], self._blank(1), {})
        if not decoded:
            return
        pixels = np.stack(images)
        reference = self.original.infer(pixels)
        outputs = {name: self._run_variant(name, runner, pixels) for name, runner in self.runners}
        self._append(out, decoded, [""] * len(decoded), reference, outputs)

    def _blank(self, count: int) -> np.ndarray:
        """NaN rows: a skipped sample keeps every column aligned with `position`."""
        return np.full((count, self.model.signature.raw_columns), np.nan, dtype=np.float32)

    def _append(
        self,
        out: dict[str, list[Any]],
        positions: list[int],
        reasons: list[str],
        reference: np.ndarray,
        outputs: dict[str, tuple[np.ndarray, str]],
    ) -> None:
        count = len(positions)
        out["position"].extend(positions)
        out["reason"].extend(reasons)
        out["node"].extend([self.node] * count)
        out.setdefault("reference", []).extend(np.asarray(reference, dtype=np.float32))
        for name, _runner in self.runners:
            rows, error = outputs.get(name, (self._blank(count), ""))
            out.setdefault(f"v:{name}", []).extend(rows)
            out.setdefault(f"e:{name}", []).extend([error] * count)

    def _run_variant(self, name: str, runner: Any, pixels: np.ndarray) -> tuple[np.ndarray, str]:
        """The variant's raw outputs on one chunk of decoded pixels (the runner applies the
        preset); NaN rows and the reason if it raised."""
        from core.engine.faults import maybe_inject

        maybe_inject("infer", name)
        try:
            return np.asarray(runner.infer(pixels), dtype=np.float32), ""
        except QuantLensError as exc:
            return self._blank(len(pixels)), str(exc)


def _chunks(samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """The sample list as the local engine's batches: (first position, paths)."""
    return [
        {"start": start, "paths": [s.path for s in samples[start : start + BATCH]]}
        for start in range(0, len(samples), BATCH)
    ]


def _one_pass(
    samples: Sequence[Sample],
    *,
    preset: str,
    image_shape: tuple[int, int, int],
    reference: ReferenceSource,
    variants: Sequence[tuple[str, Path]],
    progress: ShardProgress,
    address: str | None,
    nodes_lost: list[str],
) -> dict[str, np.ndarray]:
    """One pass over every chunk; the columns come back sorted by sample position.

    A node lost during the pass (its id goes to `nodes_lost`) stops the Ray Data pass: the
    chunks that came back are kept, and a fresh pass, its actors sized to the nodes left, runs
    the others. Ray's own recovery re-creates the lost node's actor, which may wait until the
    pass ends for a CPU the surviving actors hold: the pass would never end.
    """
    import ray

    refs = [ray.put(model_bytes(reference.path))]
    refs += [ray.put(path.read_bytes()) for _, path in variants]
    arguments = {
        "model_name": reference.path.name,
        "model_is_folder": reference.path.is_dir(),
        "reference": reference,
        "variant_names": [name for name, _ in variants],
        "preset": preset,
        "image_shape": image_shape,
    }
    chunks = _chunks(samples)
    received: list[dict[str, np.ndarray]] = []  # one item per chunk that came back
    done: set[int] = set()  # the positions that came back
    for attempt in range(MAX_NODE_LOSSES + 1):
        remaining = [c for c in chunks if not _chunk_done(c, done)]
        if not remaining:
            break
        alive = {i: n for i, n in _alive_nodes().items() if i not in nodes_lost}
        cpus = sum(n.cpus for n in alive.values())
        if cpus < 1:
            raise ClusterUnavailable(_shrunk_message(address, nodes_lost, "has no CPU left"))
        if attempt:
            # The stopped pass's actors, the lost node's re-created one included, would hold
            # or wait for the CPUs the fresh pass needs.
            _end_shard_actors()
        # One node alone is the whole cluster: its loss is the lost-cluster case.
        watched = alive if len(alive) > 1 else {}
        actors = min(cpus, len(remaining))
        wait_s = FRESH_PASS_ACTOR_WAIT_S if attempt else -1
        stream = closing(_stream(remaining, refs, actors, arguments, actor_wait_s=wait_s))
        try:
            with _watching(address, watched), stream as batches:
                for batch in batches:
                    received.append(batch)  # one append: a signal never leaves half a batch
                    done.update(int(p) for p in batch["position"])
                    progress(len(done), len(samples))
        except _NodeLost:
            nodes_lost.extend(sorted(_gone(watched)))
        except ClusterUnavailable:
            raise
        except Exception as exc:
            gone = _gone(watched)
            if not gone and not attempt:
                raise  # not a lost node: a variant's or the data's (evaluate isolates it)
            if not gone:  # the nodes left cannot finish what the lost one held
                raise ClusterUnavailable(
                    _shrunk_message(address, nodes_lost, f"failed after ({_first_line(exc)})")
                ) from None
            nodes_lost.extend(sorted(gone))  # Ray gave up on the lost node's chunks first
    else:
        if any(not _chunk_done(c, done) for c in chunks):
            raise ClusterUnavailable(_shrunk_message(address, nodes_lost, "kept losing nodes"))
    merged = {key: np.concatenate([b[key] for b in received]) for key in received[0]}
    order = np.argsort(merged["position"], kind="stable")
    return {key: values[order] for key, values in merged.items()}


def _end_shard_actors() -> None:
    """Kill this job's shard actors that are not dead yet (alive, restarting, or waiting to
    be placed): a stopped Ray Data pass may leave them holding or waiting for CPUs."""
    ray = _untyped_ray()
    try:
        job = ray.get_runtime_context().job_id
        table = ray._private.state.actors(job_id=job)
        core_worker = ray._private.worker.global_worker.core_worker
        for actor_id, info in table.items():
            if "ShardEvaluator" in info["ActorClassName"] and info["State"] != "DEAD":
                core_worker.kill_actor(ray.ActorID.from_hex(actor_id), True)
    except Exception:  # best effort: the fresh pass then waits as Ray Data does
        logging.getLogger(__name__).warning("could not end the stopped pass's actors")


def _chunk_done(chunk: dict[str, Any], done: set[int]) -> bool:
    start = int(chunk["start"])
    return all(p in done for p in range(start, start + len(chunk["paths"])))


def _shrunk_message(address: str | None, nodes_lost: list[str], what: str) -> str:
    where = f"at {address}" if address else "on this machine"
    return (
        f"the Ray cluster {where} lost {len(nodes_lost)} node(s) during the evaluation and "
        f"{what}; bring its nodes back (`ray status` lists them) and run again, or use "
        "--engine local"
    )


def _stream(
    chunks: list[dict[str, Any]],
    refs: list[Any],
    actors: int,
    arguments: dict[str, Any],
    *,
    actor_wait_s: int,
) -> Generator[dict[str, np.ndarray], None, None]:
    """A Ray Data pass of ShardEvaluator over `chunks`, with `actors` actors from the start
    (waited for at most `actor_wait_s`, or for ever when negative); one output per chunk, as
    it comes back. Closing it (or an exception in the consumer's loop) shuts the pass down."""
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    context.wait_for_min_actors_s = actor_wait_s
    context.enable_progress_bars = False
    # Chunks come back as they finish (the head sorts them by position): a chunk that is done
    # is on the head at once, so a node lost later takes only its unfinished chunks with it.
    context.execution_options.preserve_order = False
    dataset = ray.data.from_items(chunks, override_num_blocks=len(chunks))
    evaluated = dataset.map_batches(
        ShardEvaluator,
        batch_size=1,
        batch_format="numpy",
        # Every actor starts at once (each loads TensorFlow and the model, on every node), not
        # as Ray Data's autoscaling gets to it.
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors, initial_size=actors),
        num_cpus=1,
        # Ray 2.60 takes these only as plain remote args (it warns they move in Ray 2.64); the
        # default (-1, forever) would re-run a variant that kills its worker without end.
        max_restarts=RETRIES,
        max_task_retries=RETRIES,
        runtime_env=_runtime_env(),
        fn_constructor_kwargs={"refs": refs, **arguments},
    )
    batches = iter(evaluated.iter_batches(batch_size=None, batch_format="numpy"))
    try:
        for batch in batches:
            yield {key: np.asarray(values) for key, values in batch.items()}
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def evaluate(
    samples: Sequence[Sample],
    *,
    preset: Preset | str,
    image_shape: tuple[int, int, int],
    reference: ReferenceSource,
    variants: Sequence[tuple[str, Path]],
    progress: ShardProgress | None = None,
    address: str | None = None,
) -> Evaluation:
    """Run the original and every variant on `samples` on the Ray session that is open.

    Args:
        samples: the evaluation samples, in the order their rows are written.
        preset: the preprocessing preset both models are fed with.
        image_shape: (height, width, channels) of the model input.
        reference: the original model and how to load it.
        variants: (variant name, .tflite path) for each converted variant.
        progress: called with (samples done, samples in total) as chunks come back.
        address: the cluster's address (--ray-address), watched during the pass: a cluster
            that stops answering ends the evaluation with ClusterUnavailable in seconds.

    Returns:
        Raw outputs of the original and of each variant, in sample order, for the samples
        that decoded; the undecodable ones as skipped samples with their reason.

    Raises:
        ClusterUnavailable: the cluster went away, or even the original alone cannot be
            evaluated (the workers keep dying).
    """
    common: dict[str, Any] = {
        "preset": str(preset),
        "image_shape": image_shape,
        "reference": reference,
        "progress": progress or (lambda done, total: None),
        "address": address,
    }
    errors: dict[str, str] = {}
    passes = 1
    nodes_lost: list[str] = []
    try:
        columns = _one_pass(samples, variants=variants, **common, nodes_lost=nodes_lost)
    except ClusterUnavailable:
        raise
    except Exception as first:
        if address and not _answers(address):  # not a variant's fault: the cluster is gone
            raise ClusterUnavailable(lost_message(address)) from None
        if not variants:
            raise _lost(first) from None
        # Some model kills its worker every time: give each variant a pass of its own.
        columns, errors = _isolated_passes(samples, variants, {**common, "nodes_lost": nodes_lost})
        passes += 1 + len(variants)
    evaluation = _evaluation(samples, columns, [name for name, _ in variants], errors)
    evaluation.passes = passes
    evaluation.batches_by_node = _batches_by_node(columns)
    evaluation.nodes_lost = nodes_lost
    return evaluation


def _batches_by_node(columns: dict[str, np.ndarray]) -> dict[str, int]:
    """How many batches each node returned: a batch is the rows of one BATCH-sized chunk."""
    batches: dict[str, set[int]] = {}
    for position, node in zip(columns["position"], columns["node"], strict=True):
        batches.setdefault(str(node), set()).add(int(position) // BATCH)
    return {node: len(chunks) for node, chunks in sorted(batches.items())}


def _isolated_passes(
    samples: Sequence[Sample], variants: Sequence[tuple[str, Path]], common: dict[str, Any]
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    try:
        columns = _one_pass(samples, variants=[], **common)
    except ClusterUnavailable:
        raise
    except Exception as exc:
        raise _lost(exc) from None
    errors: dict[str, str] = {}
    for name, path in variants:
        try:
            alone = _one_pass(samples, variants=[(name, path)], **common)
        except ClusterUnavailable:
            raise
        except Exception as exc:
            errors[name] = (
                f"{name} crashed its Ray worker {RETRIES + 1} times while running on the images "
                f"({_first_line(exc)}); it fails alone, the other variants are kept"
            )
            continue
        columns[f"v:{name}"] = alone[f"v:{name}"]
        columns[f"e:{name}"] = alone[f"e:{name}"]
    return columns, errors


def _evaluation(
    samples: Sequence[Sample],
    columns: dict[str, np.ndarray],
    names: list[str],
    errors: dict[str, str],
) -> Evaluation:
    positions = columns["position"].astype(np.int64)
    if not np.array_equal(positions, np.arange(len(samples))):
        raise QuantLensError(
            f"the Ray pass returned {len(positions)} rows for {len(samples)} samples; "
            "run again, or use --engine local"
        )
    reasons = columns["reason"]
    ok = reasons == ""
    evaluation = Evaluation(
        kept=[s for s, good in zip(samples, ok, strict=True) if good],
        skipped=[
            SkippedSample(relpath=s.relpath, reason=str(reason))
            for s, reason, good in zip(samples, reasons, ok, strict=True)
            if not good
        ],
        reference=np.stack(columns["reference"][ok]).astype(np.float32),
        errors=errors,
    )
    for name in names:
        if name in errors:
            continue
        failures = {str(e) for e in columns[f"e:{name}"][ok] if e}
        if failures:
            evaluation.errors[name] = sorted(failures)[0]
        else:
            evaluation.variants[name] = np.stack(columns[f"v:{name}"][ok]).astype(np.float32)
    return evaluation


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (lines[-1] if lines else type(exc).__name__)[:200]


def _lost(exc: BaseException) -> ClusterUnavailable:
    return ClusterUnavailable(
        f"the Ray cluster could not evaluate the original model ({_first_line(exc)}); check "
        "that every node is up and sees the data set at the same path, or use --engine local"
    )


# -- keep-float candidates (sensitivity scan, auto-fix steps) as Ray tasks ---------------------


@dataclass(frozen=True)
class KeepFloatSource:
    """What a task needs to make a variant with some layers kept float, as the head would
    (core.engine.fixes.keep_float.keep_float_maker): the original, the variant, its calibration."""

    reference: ReferenceSource
    spec: VariantSpec
    route: str
    calibration: np.ndarray  # float32 preprocessed calibration images
    float_tflite: bytes  # the float32 model the quantizer backend starts from


@dataclass(frozen=True)
class CandidateOutputs:
    """One keep-float candidate's `.tflite` size and raw outputs on the images, or its error."""

    layers: tuple[str, ...]
    size_bytes: int = 0
    outputs: np.ndarray | None = None
    error: str | None = None


def keep_float_candidates(
    source: KeepFloatSource,
    candidates: Sequence[tuple[str, ...]],
    samples: Sequence[Sample],
    *,
    preset: Preset | str,
    image_shape: tuple[int, int, int],
    address: str | None = None,
) -> list[CandidateOutputs]:
    """Make and run each candidate (a tuple of layers kept float) on `samples`, as Ray tasks.

    The model, the calibration images and the float32 model go into the object store once;
    each task makes its candidates with one maker (one calibration for the converter's
    debugger) and runs them on the samples, decoded on the worker with the one decoder.
    Results come back in the order of `candidates`; one that cannot be made or run carries
    its error instead of outputs.

    Raises:
        ClusterUnavailable: the cluster went away, or its workers keep dying.
    """
    import ray

    cpus = max(1, int(_untyped_ray().cluster_resources().get("CPU", 1)))
    groups = [list(candidates[i::cpus]) for i in range(min(cpus, len(candidates)))]
    shared = ray.put(
        {
            "model": model_bytes(source.reference.path),
            "calibration": source.calibration,
            "float_tflite": source.float_tflite,
        }
    )
    task = ray.remote(num_cpus=1, max_retries=RETRIES, runtime_env=_runtime_env())(_candidates_task)
    paths = [s.path for s in samples]
    refs = [
        task.remote(
            shared,
            source.reference,
            source.spec,
            source.route,
            group,
            paths,
            str(preset),
            image_shape,
        )
        for group in groups
    ]
    results: list[list[CandidateOutputs]] = _gather(refs, address, "the keep-float candidates")
    by_layers = {r.layers: r for group in results for r in group}
    return [by_layers[tuple(layers)] for layers in candidates]


def _candidates_task(
    shared: dict[str, Any],
    reference: ReferenceSource,
    spec: VariantSpec,
    route: str,
    candidates: list[tuple[str, ...]],
    paths: list[str],
    preset: str,
    image_shape: tuple[int, int, int],
) -> list[CandidateOutputs]:
    """On a worker: load the original, make each candidate, run it on the images."""
    import tempfile

    from core.engine.fixes.keep_float import keep_float_maker
    from core.engine.models import load_reference

    with tempfile.TemporaryDirectory(prefix="quantlens-ray-") as folder:
        path = _unpack_model(
            shared["model"], reference.path.name, reference.path.is_dir(), Path(folder)
        )
        model = load_reference(
            path,
            trusted=reference.trusted,
            signature_key=reference.signature_key,
            input_size=reference.input_size,
        )
        try:
            make = keep_float_maker(
                model,
                spec,
                calibration=shared["calibration"],
                route=route,
                float_tflite=shared["float_tflite"],
            )
        except QuantLensError as exc:
            return [CandidateOutputs(layers=tuple(c), error=str(exc)) for c in candidates]
        images = _decoded_batches(paths, Preset(preset), image_shape)
        found = []
        for layers in candidates:
            try:
                tflite = make(tuple(layers))
                outputs = _run_tflite(tflite, images, image_shape)
            except QuantLensError as exc:
                found.append(CandidateOutputs(layers=tuple(layers), error=str(exc)))
                continue
            found.append(
                CandidateOutputs(layers=tuple(layers), size_bytes=len(tflite), outputs=outputs)
            )
        return found


def _decoded_batches(
    paths: list[str], preset: Preset, image_shape: tuple[int, int, int]
) -> list[np.ndarray]:
    """The images, decoded and preprocessed as the head's cache holds them, in BATCH chunks."""
    from core.inputs.images import decode_image
    from core.inputs.presets import apply_preset

    height, width, channels = image_shape
    batches = []
    for start in range(0, len(paths), BATCH):
        pixels = np.stack(
            [
                decode_image(p, height=height, width=width, channels=channels)
                for p in paths[start : start + BATCH]
            ]
        )
        batches.append(apply_preset(pixels, preset))
    return batches


def _run_tflite(
    tflite: bytes, batches: list[np.ndarray], image_shape: tuple[int, int, int]
) -> np.ndarray:
    from core.engine.runtime import TFLiteRunner, evaluation_batch

    batch = evaluation_batch(int(np.prod(image_shape)))
    runner = TFLiteRunner(tflite, threads=1, name="candidate", batch=batch)
    return np.concatenate([np.asarray(b, dtype=np.float32) for b in runner.outputs(batches)])


def _gather(refs: list[Any], address: str | None, what: str) -> list[Any]:
    """ray.get on tasks, with a lost cluster or dying workers as ClusterUnavailable."""
    import ray

    with _watching(address):
        try:
            found: list[Any] = ray.get(refs)
        except ClusterUnavailable:
            raise
        except Exception as exc:
            if address and not _answers(address):
                raise ClusterUnavailable(lost_message(address)) from None
            raise ClusterUnavailable(
                f"running {what} on the Ray cluster failed ({_first_line(exc)}); check that "
                "every node is up and sees the data set at the same path, or use --engine local"
            ) from None
    return found


# -- the calibration sweep's points, quantized as Ray tasks ------------------------------------


@dataclass(frozen=True)
class Quantized:
    """One sweep point's quantized `.tflite`, or the quantizer's reason for refusing it."""

    tflite: bytes | None = None
    error: str | None = None


def quantize_as_tasks(
    float_tflite: bytes,
    images: np.ndarray,
    points: Sequence[tuple[VariantSpec, np.ndarray]],
    *,
    progress: Callable[[int], None] | None = None,
    address: str | None = None,
) -> list[Quantized]:
    """Quantize the float32 model once per point, one Ray task per point, on the Ray session
    that is open: the quantizer backend's recipe (core.engine.quantizer.quantize_float_tflite),
    so a point's bytes are those the head would make from the same inputs.

    The float32 model and the calibration pool go into the object store once; a task gets its
    variant and the positions of its calibration images in the pool.

    Args:
        float_tflite: the float32 `.tflite` every point starts from.
        images: the preprocessed calibration pool, float32 [N,H,W,C].
        points: (variant, positions in `images` that calibrate it), one per task.
        progress: called with a point's position in `points` once its result is on the head
            (in that order).
        address: the cluster's address (--ray-address), watched while the tasks run.

    Returns:
        One result per point, in the order of `points`.

    Raises:
        ClusterUnavailable: the cluster went away, or a task's workers kept dying.
    """
    import ray

    shared = ray.put({"float_tflite": float_tflite, "images": images})
    task = ray.remote(num_cpus=1, max_retries=RETRIES, runtime_env=_runtime_env())(_quantize_task)
    refs = [task.remote(shared, spec, draw) for spec, draw in points]
    found: list[Quantized] = []
    for position, ref in enumerate(refs):
        found.extend(_gather([ref], address, "the sweep's quantization"))
        if progress is not None:
            progress(position)
    return found


def _quantize_task(shared: dict[str, Any], spec: VariantSpec, draw: np.ndarray) -> Quantized:
    """On a worker: one point's recipe, calibrated on its images of the pool."""
    from core.engine.quantizer import quantize_float_tflite

    try:
        tflite = quantize_float_tflite(shared["float_tflite"], spec, shared["images"][draw])
    except QuantLensError as exc:
        return Quantized(error=str(exc))
    return Quantized(tflite=tflite)
