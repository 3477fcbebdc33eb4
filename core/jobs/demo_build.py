"""Build the embedded demo in a detached worker, and tell whether it is ready, building or failed."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from core import posix
from core.inputs.demo import demo_paths, demo_root
from core.jobs.workspace import SOURCE_ROOT, resolved_home


def demo_build_state(*, home: Path | None = None) -> tuple[str, str]:
    """("ready" | "building" | "failed" | "missing", the last progress message)."""
    workspace = resolved_home(home)
    if demo_paths(workspace).ready():
        return "ready", "the demo is built"
    root = demo_root(workspace)
    log = root.parent / "demo-build.log"
    pid_file = root.parent / "demo-build.pid"
    message = ""
    if log.exists():
        lines = [
            ln
            for ln in log.read_text(encoding="utf-8", errors="replace").splitlines()
            if ln.strip()
        ]
        message = lines[-1] if lines else ""
    if pid_file.exists():
        try:
            pid = int(pid_file.read_text().strip())
        except ValueError:
            pid = 0
        if posix.pid_alive(pid):
            return "building", message.partition(" ")[2] or "starting"
        return "failed", message or "the demo build stopped"
    return "missing", ""


def start_demo_build(*, home: Path | None = None) -> None:
    """Build the demo in a detached worker unless it is ready or already being built."""
    state, _ = demo_build_state(home=home)
    if state in ("ready", "building"):
        return
    workspace = resolved_home(home)
    root = demo_root(workspace)
    root.parent.mkdir(parents=True, exist_ok=True)
    with (root.parent / "demo-build.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "core.jobs.worker", "demo", str(root)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(SOURCE_ROOT),
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", QUANTLENS_HOME=str(workspace)),
        )
    (root.parent / "demo-build.pid").write_text(str(process.pid))
    threading.Thread(target=process.wait, daemon=True).start()
