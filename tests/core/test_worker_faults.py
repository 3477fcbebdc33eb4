"""Native crashes, hangs and memory exhaustion in the worker, through the real CLI.

The test-only fault hook (core.engine.faults, QUANTLENS_FAULT=kind@step[:variant]) makes the worker
segfault, abort, hang or hoard memory at one step. Each test checks the one-line outcome of the
hit variant, that the other variant finished, that nothing is left behind (scratch files, temp
files, processes), and that a good run in the same workspace then completes without touching the
earlier run's files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from core import posix
from tests.core.conftest import unlabelled_copy

REPO = Path(__file__).resolve().parents[2]
SCRATCH = (".decoded.u8", ".decoded.json", ".calibration.npy", ".tmp")
# A worker peaks near 1.9 GB of address space (TensorFlow's import, then the tiny model's
# conversion), measured from /proc/<pid>/status VmPeak; 3 GB lets it work and stops the hoard.
MEMORY_LIMIT_GB = 3
# The worker reaches conversion 8-10 s after start on a loaded 2-core machine; 3x margin.
HANG_TIMEOUT_S = 30

pytestmark = pytest.mark.slow


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A fresh workspace, with the system temp dir pointed into the test (to catch strays)."""
    (tmp_path / "systmp").mkdir()
    return tmp_path / "workspace"


def run_cli(*args: str, home: Path, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QUANTLENS_HOME": str(home), "TMPDIR": str(home.parent / "systmp")}
    env.pop("QUANTLENS_FAULT", None)
    if fault:
        env["QUANTLENS_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "core", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def run_tiny(
    model: Path,
    data: Path,
    out: Path,
    home: Path,
    *extra: str,
    modes: str,
    fault: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        "run", str(model), "--data", str(data), "--modes", modes, "--out", str(out),
        "--latency-runs", "3", "--threads", "1", *extra, home=home, fault=fault,
    )  # fmt: skip


def variants(run_dir: Path) -> dict[str, dict[str, Any]]:
    report = json.loads((run_dir / "report.json").read_text())
    return {v["name"]: v for v in report["variants"]}


def snapshot(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def process_gone(pid: int) -> bool:
    """True when the pid no longer runs (absent, or a zombie awaiting its reaper)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def processes_mentioning(text: str) -> list[int]:
    """Live pids whose command line contains `text` (the run directory names its worker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and not process_gone(int(entry.name)):
            found.append(int(entry.name))
    return found


def assert_nothing_left(run_dir: Path, home: Path) -> None:
    leftovers = [name for name in SCRATCH if (run_dir / name).exists()]
    assert leftovers == []
    # Only the host's timing lock stays in the system temp folder: every run shares that file.
    assert {p.name for p in (home.parent / "systmp").iterdir()} <= {posix.TIMING_LOCK.name}
    assert processes_mentioning(str(run_dir)) == []
    status = json.loads((run_dir / "status.json").read_text())
    assert process_gone(int(status["worker_pid"]))


def assert_good_run_after(earlier: Path, model: Path, data: Path, home: Path, out: Path) -> None:
    """The service still works: a clean run in the same workspace, earlier files untouched."""
    before = snapshot(earlier)
    data = unlabelled_copy(data, out.parent / "unlabelled")  # a random model: labels -> no PASS
    done = run_tiny(model, data, out, home, modes="float16")
    assert done.returncode == 0, done.stderr[-2000:]
    assert variants(out)["float16"]["status"] == "done"
    assert variants(out)["float16"]["top1_agreement_pct"] == 100.0
    assert snapshot(earlier) == before
    history = run_cli("history", home=home)
    assert history.returncode == 0
    run_ids = {json.loads((d / "status.json").read_text())["run_id"] for d in (earlier, out)}
    assert all(run_id in history.stdout for run_id in run_ids)
    assert_nothing_left(out, home)


def test_segv_during_conversion_crashes_only_that_variant(
    tiny_models: dict[str, Path], tiny_data: Path, home: Path
) -> None:
    out = home.parent / "segv"
    done = run_tiny(
        tiny_models["keras"], tiny_data, out, home, modes="float16,int8",
        fault="segv@convert:float16",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "float16: crashed (SIGSEGV) during conversion" in done.stdout
    assert re.search(r"^float16 .* CRASHED$", done.stdout, re.MULTILINE)
    result = variants(out)
    assert result["float16"]["status"] == "crashed"
    assert result["float16"]["error"] == "crashed (SIGSEGV) during conversion"
    assert "Segmentation fault" in result["float16"]["stderr_tail"]
    assert "maybe_inject" in result["float16"]["stderr_tail"]  # the Python stack is kept
    assert result["int8"]["status"] == "done" and result["int8"]["n"] == 24
    assert not (out / "float16.tflite").exists() and (out / "int8.tflite").is_file()
    assert_nothing_left(out, home)
    assert_good_run_after(out, tiny_models["keras"], tiny_data, home, home.parent / "good")


def test_abort_during_inference_crashes_only_that_variant(
    tiny_models: dict[str, Path], tiny_data: Path, home: Path
) -> None:
    out = home.parent / "abort"
    done = run_tiny(
        tiny_models["saved_model"], tiny_data, out, home, modes="float16,int8",
        fault="abort@infer:int8",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    result = variants(out)
    error = result["int8"]["error"]
    assert f"int8: {error}" in done.stdout
    assert result["int8"]["status"] == "crashed"
    assert "Aborted" in result["int8"]["stderr_tail"]
    assert result["float16"]["status"] == "done" and result["float16"]["n"] == 24
    assert (out / "float16.probs.npy").is_file() and not (out / "int8.probs.npy").exists()
    assert_nothing_left(out, home)
    assert_good_run_after(out, tiny_models["saved_model"], tiny_data, home, home.parent / "good")
    assert error == "crashed (SIGABRT) during TFLite inference"


def test_hang_hits_the_timeout_and_the_whole_process_group_is_killed(
    tiny_models: dict[str, Path], tiny_data: Path, home: Path
) -> None:
    out = home.parent / "hang"
    done = run_tiny(
        tiny_models["keras"], tiny_data, out, home, "--timeout", str(HANG_TIMEOUT_S),
        # float16 by name: the float32 pivot of the split converts before it.
        modes="float16,int8", fault="hang@convert:float16",
    )  # fmt: skip
    assert done.returncode == 3, done.stderr[-2000:]  # the job did not finish: not a verdict
    reason = "timeout: stopped after the time limit during conversion"
    assert f"float16: {reason}" in done.stdout
    result = variants(out)
    assert result["float16"]["status"] == "timeout"
    assert result["float16"]["error"] == reason
    assert result["int8"]["status"] == "timeout"
    assert result["int8"]["error"] == f"not run: {reason}"
    assert json.loads((out / "report.json").read_text())["run"]["status"] == "timeout"
    # The hanging worker had started a child in its group; the timeout must end it too.
    child = re.search(r"fault: hanging with child process (\d+)", result["float16"]["stderr_tail"])
    assert child is not None
    assert process_gone(int(child.group(1)))
    assert_nothing_left(out, home)
    assert_good_run_after(out, tiny_models["keras"], tiny_data, home, home.parent / "good")


def test_memory_limit_stops_a_hoarding_conversion(
    tiny_models: dict[str, Path], tiny_data: Path, home: Path
) -> None:
    out = home.parent / "oom"
    done = run_tiny(
        tiny_models["keras"], tiny_data, out, home, "--memory-gb", str(MEMORY_LIMIT_GB),
        modes="float16,int8", fault="oom@convert:float16",
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    reason = f"out of memory (limit {MEMORY_LIMIT_GB} GB) during conversion"
    assert f"float16: {reason}" in done.stdout
    result = variants(out)
    assert result["float16"]["status"] == "failed"
    assert result["float16"]["error"] == reason
    assert "MemoryError" in result["float16"]["stderr_tail"]
    # The restarted worker, under the same limit, converts and runs the other variant.
    assert result["int8"]["status"] == "done" and result["int8"]["n"] == 24
    assert_nothing_left(out, home)
    assert_good_run_after(out, tiny_models["keras"], tiny_data, home, home.parent / "good")
