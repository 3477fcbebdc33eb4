"""The two demo builds' states (missing -> building -> ready | failed), read from the files a
detached build leaves in the workspace: the MobileNetV2 build's state is its own, and its
failure never touches the small demo's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.inputs.demo_paths import demo_paths, mobilenet_demo_paths
from core.jobs.demo_jobs import (
    CHAIN_ENV,
    MOBILENET,
    SMALL,
    build_files,
    demo_build_state,
    start_demo_build,
    worker_command,
)

DEAD_PID = "999999"  # beyond the default pid_max of 32768 on most boxes: never alive


def _make_ready(saved_model: Path, keras_model: Path) -> None:
    """The two model files a finished build leaves (stand-ins: only their presence counts)."""
    saved_model.mkdir(parents=True, exist_ok=True)
    (saved_model / "saved_model.pb").write_bytes(b"pb")
    keras_model.parent.mkdir(parents=True, exist_ok=True)
    keras_model.write_bytes(b"keras")


def _small_demo(home: Path) -> None:
    small = demo_paths(home)
    _make_ready(small.saved_model, small.keras_model)
    small.data_csv.parent.mkdir(parents=True, exist_ok=True)
    small.data_csv.write_text("filepath,label\n", encoding="utf-8")


def test_mobilenet_demo_lives_in_the_demo_and_shares_its_data(tmp_path: Path) -> None:
    small, large = demo_paths(tmp_path), mobilenet_demo_paths(tmp_path)
    assert large.root == tmp_path / "demo" / "mobilenetv2"
    assert large.saved_model == large.root / "saved_model"
    assert large.keras_model == large.root / "digits_mobilenetv2.keras"
    assert (large.data_csv, large.labels) == (small.data_csv, small.labels)
    assert mobilenet_demo_paths(root=tmp_path / "x").root == tmp_path / "x" / "mobilenetv2"


def test_mobilenet_build_states(tmp_path: Path) -> None:
    _small_demo(tmp_path)
    assert demo_build_state(home=tmp_path, which=SMALL)[0] == "ready"
    assert demo_build_state(home=tmp_path, which=MOBILENET) == ("missing", "")

    log, pid_file = build_files(MOBILENET, home=tmp_path)
    assert (log.name, pid_file.name) == ("demo-mobilenetv2-build.log", "demo-mobilenetv2-build.pid")
    pid_file.write_text(str(os.getpid()))  # a live process: the build is running
    assert demo_build_state(home=tmp_path, which=MOBILENET) == ("building", "starting")
    log.write_text("0.05 training epoch 0/6\n0.47 training epoch 3/6 (train accuracy 0.827)\n")
    assert demo_build_state(home=tmp_path, which=MOBILENET) == (
        "building",
        "training epoch 3/6 (train accuracy 0.827)",
    )

    pid_file.write_text(DEAD_PID)  # killed mid-epoch (no error line): failed, saying where
    assert demo_build_state(home=tmp_path, which=MOBILENET) == (
        "failed",
        "the build stopped while training epoch 3/6 (train accuracy 0.827)",
    )
    # it stopped on an error, without a model: failed, with its last words
    log.write_text(log.read_text() + "RuntimeError: out of disk space\n")
    assert demo_build_state(home=tmp_path, which=MOBILENET) == (
        "failed",
        "RuntimeError: out of disk space",
    )
    assert demo_build_state(home=tmp_path, which=SMALL)[0] == "ready"  # untouched

    large = mobilenet_demo_paths(tmp_path)
    _make_ready(large.saved_model, large.keras_model)
    assert demo_build_state(home=tmp_path, which=MOBILENET)[0] == "ready"


def test_a_failed_small_build_is_not_the_mobilenet_builds(tmp_path: Path) -> None:
    small_log, small_pid = build_files(SMALL, home=tmp_path)
    small_pid.write_text(DEAD_PID)
    small_log.write_text("RuntimeError: boom\n")
    assert demo_build_state(home=tmp_path, which=SMALL) == ("failed", "RuntimeError: boom")
    assert demo_build_state(home=tmp_path, which=MOBILENET) == ("missing", "")


def test_the_mobilenet_build_waits_for_the_small_demos_data(tmp_path: Path) -> None:
    start_demo_build(home=tmp_path, which=MOBILENET)  # nothing to train on yet: no process
    assert not any(p.exists() for p in build_files(MOBILENET, home=tmp_path))
    assert demo_build_state(home=tmp_path, which=MOBILENET) == ("missing", "")


def test_a_ready_or_running_build_is_not_started_again(tmp_path: Path) -> None:
    _small_demo(tmp_path)
    log, pid_file = build_files(MOBILENET, home=tmp_path)
    pid_file.write_text(str(os.getpid()))
    start_demo_build(home=tmp_path, which=MOBILENET)
    assert pid_file.read_text() == str(os.getpid())  # the running one was kept
    assert not log.exists()


def test_a_first_launch_chains_the_mobilenet_build_unless_the_operator_says_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CHAIN_ENV, raising=False)
    chained = worker_command(tmp_path, SMALL, then_mobilenet=True, epochs=None)
    assert chained == ["demo", str(tmp_path), "--then-mobilenetv2"]
    monkeypatch.setenv(CHAIN_ENV, "0")
    assert worker_command(tmp_path, SMALL, then_mobilenet=True, epochs=None) == [
        "demo",
        str(tmp_path),
    ]
    assert worker_command(tmp_path, MOBILENET, then_mobilenet=True, epochs=1) == [
        "demo-mobilenetv2",
        str(tmp_path),
        "--epochs",
        "1",
    ]


def test_a_killed_builds_staging_folder_is_removed_by_the_next_build(tmp_path: Path) -> None:
    """A build killed with SIGKILL cannot clean up: the next one removes its staging folder,
    and leaves alone one whose build is still running."""
    from core.engine.demo_models import _staging_folder

    dead = tmp_path / ".mobilenetv2-999999-abc"  # no such process
    running = tmp_path / f".mobilenetv2-{os.getppid()}-xyz"  # the test runner's parent is alive
    other = tmp_path / ".mobilenetv2-notes"  # not a staging folder's name
    for folder in (dead, running, other):
        (folder / "saved_model").mkdir(parents=True)
    made = _staging_folder(tmp_path, ".mobilenetv2-")
    assert not dead.exists()
    assert running.is_dir() and other.is_dir()
    assert made.is_dir() and made.name.startswith(f".mobilenetv2-{os.getpid()}-")


def test_the_outlier_demo_is_built_between_the_small_and_the_mobilenet_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """small -> outlier (seconds) -> MobileNetV2: each build starts the next one, and the
    operator's 0 keeps a first launch to the small demo."""
    from core.inputs.demo_paths import outlier_demo_paths
    from core.jobs.demo_jobs import OUTLIER

    monkeypatch.delenv(CHAIN_ENV, raising=False)
    assert worker_command(tmp_path, OUTLIER, then_mobilenet=True, epochs=None) == [
        "demo-outlier",
        str(tmp_path),
        "--then-mobilenetv2",
    ]
    monkeypatch.setenv(CHAIN_ENV, "0")
    assert worker_command(tmp_path, OUTLIER, then_mobilenet=True, epochs=None) == [
        "demo-outlier",
        str(tmp_path),
    ]
    # Its own folder and state, on the small demo's data, which it waits for.
    outlier = outlier_demo_paths(tmp_path)
    assert outlier.root == tmp_path / "demo" / "outlier"
    assert outlier.data_csv == demo_paths(tmp_path).data_csv
    assert demo_build_state(home=tmp_path, which=OUTLIER) == ("missing", "")
    start_demo_build(home=tmp_path, which=OUTLIER)  # nothing to train on yet: no process
    assert not any(p.exists() for p in build_files(OUTLIER, home=tmp_path))
    _small_demo(tmp_path)
    _make_ready(outlier.saved_model, outlier.keras_model)
    assert demo_build_state(home=tmp_path, which=OUTLIER)[0] == "ready"
    assert demo_build_state(home=tmp_path, which=MOBILENET) == ("missing", "")
