"""`python -m core run` end to end on a tiny real model: the table, report.json recomputed
independently from the files it wrote, skipped images, and the exit codes."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.core.conftest import unlabelled_copy

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def binomial_tail(correct: int, n: int, rate: float) -> float:
    """P(X >= correct), X ~ Binomial(n, rate), summed term by term (independent of scipy)."""
    return sum(math.comb(n, k) * rate**k * (1 - rate) ** (n - k) for k in range(correct, n + 1))


def run_cli(
    *args: str, home: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "QUANTLENS_HOME": str(home), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "core", *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def wilson(k: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


@pytest.fixture(scope="module")
def data_with_broken_images(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny data set plus a truncated PNG and a text file named .jpg."""
    root = tmp_path_factory.mktemp("broken_data")
    shutil.copytree(tiny_data.parent, root, dirs_exist_ok=True)
    good = (root / "images/c0/0.png").read_bytes()
    (root / "images/c0/truncated.png").write_bytes(good[: len(good) // 2])
    (root / "images/c1/notes.jpg").write_text("this is not a picture", encoding="utf-8")
    with (root / "data.csv").open("a", encoding="utf-8") as f:
        f.write("images/c0/truncated.png,0\nimages/c1/notes.jpg,1\n")
    return root / "data.csv"


@pytest.fixture(scope="module")
def finished_run(
    tiny_models: dict[str, Path],
    data_with_broken_images: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    home = tmp_path_factory.mktemp("home")
    out = home / "out"
    done = run_cli(
        "run",
        str(tiny_models["saved_model"]),
        "--data",
        str(data_with_broken_images),
        "--modes",
        "float32,float16,int8",
        "--preprocess",
        "unit",
        "--min-agreement",
        "99.99",
        "--latency-runs",
        "10",
        "--threads",
        "1",
        "--out",
        str(out),
        home=home,
    )
    return done, out, home


def test_run_prints_table_and_writes_files(
    finished_run: tuple[subprocess.CompletedProcess[str], Path, Path],
) -> None:
    done, out, _ = finished_run
    assert done.returncode in (0, 1), done.stderr
    assert "Traceback" not in done.stderr
    for name in ("float32", "float16", "int8"):
        assert (out / f"{name}.tflite").read_bytes()[4:8] == b"TFL3"
        assert any(
            line.startswith(name) and re.search(r"(PASS|FAIL|NO VERDICT)$", line)
            for line in done.stdout.splitlines()
        )
    assert "24 images compared, 2 skipped" in done.stdout


def test_report_numbers_recompute_from_the_written_arrays(
    finished_run: tuple[subprocess.CompletedProcess[str], Path, Path],
) -> None:
    _, out, _ = finished_run
    report = json.loads((out / "report.json").read_text())
    ref = np.load(out / "reference.probs.npy").astype(np.float64)
    with (out / "samples.csv").open() as f:
        labels = np.array([int(r["label"]) for r in csv.DictReader(f)])
    ref_top1 = ref.argmax(axis=1)
    assert report["reference"]["accuracy_pct"] == pytest.approx(100 * np.mean(ref_top1 == labels))
    for variant in report["variants"]:
        assert variant["status"] == "done", variant["error"]
        # The model ends in softmax: int8's dequantized output is still a distribution.
        assert variant["softmax_applied"] is False
        tfl = np.load(out / f"{variant['name']}.probs.npy").astype(np.float64)
        tfl_top1 = tfl.argmax(axis=1)
        agree = int(np.sum(ref_top1 == tfl_top1))
        n = len(ref)
        assert variant["n"] == n == 24
        assert variant["top1_agreement_pct"] == pytest.approx(100 * agree / n)
        assert variant["top1_agreement_ci95"] == pytest.approx(list(wilson(agree, n)), abs=1e-9)
        assert variant["disagreements"] == n - agree
        assert variant["max_abs_prob_delta"] == pytest.approx(np.max(np.abs(ref - tfl)), abs=1e-6)
        assert variant["tflite_accuracy_pct"] == pytest.approx(100 * np.mean(tfl_top1 == labels))
        assert variant["size_bytes"] == (out / f"{variant['name']}.tflite").stat().st_size
        # A random model is not clearly above always answering the labels' most common class
        # (one-sided binomial p >= 1e-3): then nothing passes.
        near_chance = (
            binomial_tail(int(np.sum(ref_top1 == labels)), n, np.bincount(labels).max() / n) >= 1e-3
        )
        assert variant["passed"] == (100 * agree / n >= 99.99 and not near_chance)
        assert (variant["verdict_reason"] is not None) == near_chance
        with (out / f"{variant['name']}.samples.csv").open() as f:
            flags = [int(r["agree"]) for r in csv.DictReader(f)]
        assert sum(flags) == agree
        latency = np.load(out / f"{variant['name']}.latency.npy")
        assert variant["latency_ms"]["n"] == len(latency) == 10
        assert variant["latency_ms"]["p50"] == pytest.approx(float(np.percentile(latency, 50)))
    sizes = {v["name"]: v["size_bytes"] for v in report["variants"]}
    assert sizes["int8"] < sizes["float16"] < sizes["float32"]
    float32 = sizes["float32"]
    int8 = next(v for v in report["variants"] if v["name"] == "int8")
    assert int8["size_reduction_vs_float32_pct"] == pytest.approx(
        100 * (1 - sizes["int8"] / float32)
    )


def test_exit_status_follows_the_threshold(
    finished_run: tuple[subprocess.CompletedProcess[str], Path, Path],
) -> None:
    done, out, _ = finished_run
    report = json.loads((out / "report.json").read_text())
    all_pass = all(v["top1_agreement_pct"] >= 99.99 for v in report["variants"])
    assert done.returncode == (0 if all_pass else 1)


def test_broken_images_are_skipped_with_reasons(
    finished_run: tuple[subprocess.CompletedProcess[str], Path, Path],
) -> None:
    _, out, _ = finished_run
    report = json.loads((out / "report.json").read_text())
    assert report["dataset"]["num_skipped"] == 2
    with (out / "skipped.csv").open() as f:
        reasons = {r["relpath"]: r["reason"] for r in csv.DictReader(f)}
    assert reasons["images/c1/notes.jpg"] == "not an image file (format not recognised)"
    assert "truncated" in reasons["images/c0/truncated.png"]


def test_history_lists_the_cli_run(
    finished_run: tuple[subprocess.CompletedProcess[str], Path, Path],
) -> None:
    _, out, home = finished_run
    listing = run_cli("history", home=home)
    report = json.loads((out / "report.json").read_text())
    assert listing.returncode == 0
    assert report["run"]["id"] in listing.stdout
    assert "done" in listing.stdout


def test_threshold_zero_passes_with_exit_0(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    done = run_cli(
        "run",
        str(tiny_models["keras"]),
        "--data",
        # Unlabelled: the random tiny model is near chance on labels, where nothing may PASS.
        str(unlabelled_copy(tiny_data, tmp_path / "data")),
        "--modes",
        "dynamic",
        "--min-agreement",
        "0",
        "--latency-runs",
        "3",
        "--out",
        str(tmp_path / "out"),
        home=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["reference"]["format"] == "keras"
    assert report["variants"][0]["passed"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["run", "/nonexistent/model", "--data", "/nonexistent.csv"],
            "error: model path /nonexistent/model does not exist; check the path",
        ),
        (
            ["run", "MODEL", "--data", "DATA", "--modes", "int4"],
            "error: unknown mode 'int4'; choose from float32, dynamic, float16, int8, int16x8",
        ),
        (
            ["run", "MODEL", "--data", "DATA", "--samples", "0"],
            "error: --samples must be at least 1; got 0",
        ),
        (
            ["run", "NOISE", "--data", "DATA"],
            "error: noise.keras is not a valid .keras file (it is not a zip archive)",
        ),
        (
            ["run", "MODEL", "--data", "DATA", "--timeout", "0"],
            "error: --timeout must be greater than 0; got 0 (leave it out for the default)",
        ),
        (
            ["run", "MODEL", "--data", "DATA", "--memory-gb", "0"],
            "error: --memory-gb must be greater than 0; got 0 (leave it out for the default)",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line(
    args: list[str], message: str, tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    noise = tmp_path / "noise.keras"
    noise.write_bytes(os.urandom(2048))
    replace = {
        "MODEL": str(tiny_models["saved_model"]),
        "DATA": str(tiny_data),
        "NOISE": str(noise),
    }
    done = run_cli(
        *[replace.get(a, a) for a in args], "--out", str(tmp_path / "out"), home=tmp_path
    )
    assert done.returncode == 2
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(message)
    assert "Traceback" not in done.stderr


# -- the exit status table (docs/command-line.md, "Exit status"): every row through the real CLI ---------------


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    assert "Traceback" not in stderr
    return lines[0]


def test_an_unwritable_out_folder_is_bad_input(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    done = run_cli(
        "run", str(tiny_models["keras"]), "--data", str(tiny_data), "--modes", "float16",
        "--out", "/dev/null/x", home=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert one_error_line(done.stderr) == (
        "error: cannot write the run folder /dev/null/x: Not a directory; "
        "choose a writable folder (--out, or QUANTLENS_HOME)"
    )


@pytest.mark.parametrize(
    ("fault", "extra", "message"),
    [
        ("segv@load", [], "error: crashed (SIGSEGV) during model loading; "),
        (
            "oom@load",
            ["--memory-gb", "3"],
            "error: out of memory (limit 3 GB) during model loading; ",
        ),
        (
            "hang@reference",
            ["--timeout", "40"],
            "error: timeout: stopped after the time limit during reference inference; ",
        ),
    ],
)
def test_a_job_that_dies_outside_any_variant_exits_3(
    fault: str,
    extra: list[str],
    message: str,
    tiny_models: dict[str, Path],
    tiny_data: Path,
    tmp_path: Path,
) -> None:
    """Out of memory, a segfault or the time limit at the same step: one outcome, exit 3."""
    out = tmp_path / "out"
    done = run_cli(
        "run", str(tiny_models["keras"]), "--data", str(tiny_data), "--modes", "float16",
        "--out", str(out), *extra, home=tmp_path, env={"QUANTLENS_FAULT": fault},
    )  # fmt: skip
    assert done.returncode == 3, done.stderr[-3000:]
    line = one_error_line(done.stderr)
    assert line.startswith(message), line
    assert line.endswith(f"the worker's output is in {out / 'worker.log'}")


def test_a_variant_that_crashes_alone_exits_1(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    """The job finishes; the crashed variant did not meet the bar."""
    out = tmp_path / "out"
    done = run_cli(
        "run", str(tiny_models["keras"]), "--data", str(tiny_data), "--modes", "float16",
        "--min-agreement", "0", "--latency-runs", "3", "--out", str(out),
        home=tmp_path, env={"QUANTLENS_FAULT": "segv@infer:float16"},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["status"] == "done"
    assert report["variants"][0]["status"] == "crashed"


def test_ctrl_c_cancels_the_run_and_exits_130(
    tiny_models: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "QUANTLENS_HOME": str(tmp_path), "QUANTLENS_FAULT": "hang@convert"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "core", "run", str(tiny_models["keras"]), "--data",
         str(tiny_data), "--modes", "float16", "--out", str(out)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_sigint,
    )  # fmt: skip
    try:
        deadline = time.time() + 300
        while time.time() < deadline and b'"convert"' not in _read(out / "progress.jsonl"):
            time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr[-3000:]
    assert one_error_line(stderr) == "error: cancelled by the user"
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "cancelled"
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["status"] == "cancelled"
    assert report["variants"][0]["status"] == "cancelled"


def _default_sigint() -> None:
    """Ctrl-C as a terminal delivers it: a suite started in the background (`make test &`)
    inherits SIGINT ignored, which would make the CLI deaf to it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def test_the_quantlens_console_script_is_the_same_command_line(tmp_path: Path) -> None:
    """`make install` installs `quantlens` next to `python -m core`; both run core.cli."""
    script = Path(sys.executable).parent / "quantlens"
    assert script.exists(), "the quantlens console script is missing: run `make install`"
    env = {**os.environ, "QUANTLENS_HOME": str(tmp_path / "ws")}
    shown = subprocess.run(
        [str(script), "history"], capture_output=True, text=True, env=env, check=False
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "no runs stored yet; start one with `python -m core run`"
    usage = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False)
    assert usage.stdout.startswith("usage: quantlens ")
