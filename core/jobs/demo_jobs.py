"""Build the embedded demos in detached workers, and tell whether each is ready, building or failed.

The small demo is built first (the first launch waits for it, about a minute); its worker then
starts the outlier-channel demo's build in a second worker (seconds), which starts the
MobileNetV2-0.35 demo's build in a third, so Run is clickable on the small demo while the
others train. Each build has its own log and pid file in the workspace: a failed build leaves
the small demo, and the server, untouched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from core import posix
from core.inputs.demo_paths import (
    DemoPaths,
    demo_paths,
    demo_root,
    mobilenet_demo_paths,
    outlier_demo_paths,
)
from core.jobs.workspace import SOURCE_ROOT, resolved_home

SMALL = "small"
MOBILENET = "mobilenetv2"
OUTLIER = "outlier"
DEMOS = (SMALL, OUTLIER, MOBILENET)
_FILE_STEM = {
    SMALL: "demo-build",
    OUTLIER: "demo-outlier-build",
    MOBILENET: "demo-mobilenetv2-build",
}
_WORKER_COMMAND = {SMALL: "demo", OUTLIER: "demo-outlier", MOBILENET: "demo-mobilenetv2"}


def _paths(which: str, workspace: Path) -> DemoPaths:
    if which == MOBILENET:
        return mobilenet_demo_paths(workspace)
    return outlier_demo_paths(workspace) if which == OUTLIER else demo_paths(workspace)


def build_files(which: str, *, home: Path | None = None) -> tuple[Path, Path]:
    """(log, pid file) of one demo's build, in the workspace."""
    workspace = resolved_home(home)
    stem = _FILE_STEM[which]
    return workspace / f"{stem}.log", workspace / f"{stem}.pid"


def demo_build_state(*, home: Path | None = None, which: str = SMALL) -> tuple[str, str]:
    """("ready" | "building" | "failed" | "missing", the last progress message) of one demo."""
    workspace = resolved_home(home)
    if _paths(which, workspace).ready():
        return "ready", "the demo is built"
    log, pid_file = build_files(which, home=workspace)
    message = _last_line(log)
    if pid_file.exists():
        try:
            pid = int(pid_file.read_text().strip())
        except ValueError:
            pid = 0
        progress = _progress_message(message)
        if posix.pid_alive(pid):
            return "building", progress or "starting"
        if progress is not None:  # killed without a word (out of memory, a signal)
            return "failed", f"the build stopped while {progress}"
        return "failed", message or "the demo build stopped"
    return "missing", ""


def demo_build_steps(*, home: Path | None = None, which: str = SMALL) -> list[tuple[float, str]]:
    """Every (fraction, message) progress line of one demo's build so far, in order: what a
    first launch shows while it waits."""
    log, _ = build_files(which, home=resolved_home(home))
    if not log.exists():
        return []
    steps = []
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        message = _progress_message(line.strip())
        if message:
            steps.append((float(line.split(" ", 1)[0]), message))
    return steps


def _progress_message(line: str) -> str | None:
    """The message of a "<fraction> <message>" progress line; None for any other line."""
    head, _, rest = line.partition(" ")
    try:
        float(head)
    except ValueError:
        return None
    return rest


def _last_line(log: Path) -> str:
    if not log.exists():
        return ""
    lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln]
    return lines[-1].strip() if lines else ""


# Set to 0 (the test suite does) to keep a first launch to the small demo: a detached
# training (the outlier demo's, then MobileNetV2's) would outlive a test's server and hold the
# host's timing lock an epoch at a time, stalling every later run's latency stage.
CHAIN_ENV = "QUANTLENS_MOBILENET_DEMO"


def worker_command(
    root: Path, which: str, *, then_mobilenet: bool, epochs: int | None
) -> list[str]:
    """The `core.jobs.worker` arguments that build one demo (the small one chains the outlier
    demo's build, which chains MobileNetV2's)."""
    command = [_WORKER_COMMAND[which], str(root)]
    if which != MOBILENET and then_mobilenet and os.environ.get(CHAIN_ENV, "1") != "0":
        command.append("--then-mobilenetv2")
    if which == MOBILENET and epochs is not None:
        command += ["--epochs", str(epochs)]
    return command


def start_demo_build(
    *,
    home: Path | None = None,
    which: str = SMALL,
    then_mobilenet: bool = True,
    epochs: int | None = None,
) -> None:
    """Build a demo in a detached worker unless it is ready or already being built.

    The small demo's worker goes on to start the outlier demo's build, and that one the
    MobileNetV2 build (unless `then_mobilenet` is False). Both train on the small demo's data,
    so they wait for it: until that exists, this does nothing. `epochs` shortens the
    MobileNetV2 training (tests).
    """
    state, _ = demo_build_state(home=home, which=which)
    if state in ("ready", "building"):
        return
    workspace = resolved_home(home)
    if which != SMALL and not demo_paths(workspace).data_csv.is_file():
        return
    root = demo_root(workspace)
    root.parent.mkdir(parents=True, exist_ok=True)
    command = worker_command(root, which, then_mobilenet=then_mobilenet, epochs=epochs)
    log_file, pid_file = build_files(which, home=workspace)
    with log_file.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "core.jobs.worker", *command],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(SOURCE_ROOT),
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", QUANTLENS_HOME=str(workspace)),
        )
    pid_file.write_text(str(process.pid))
    threading.Thread(target=process.wait, daemon=True).start()
