"""Benchmark: memory and page times of a large run on the local engine.

Builds the embedded demo (32x32 digits) once, then makes data sets of N rows cheaply: hard
links to the demo's few hundred images under new names, and a CSV listing them. For each size
(--small, then --rows) it runs `python -m core run DEMO --data CSV --modes float16` on the
local engine and measures:

- peak RSS of the whole process tree: /proc is sampled every 0.1 s, summing VmRSS over the
  `core run` process and all its descendants (the CLI, the supervisor, the worker); the
  largest sum seen is the peak. Also printed: the largest single process,
  resource.getrusage(RUSAGE_CHILDREN).ru_maxrss of a fresh wrapper process.
- wall seconds, and seconds per 1,000 images.

The slope, (peak at N - peak at small) / ((N - small) / 1000), is the growth in MB per 1,000
images; flat memory means close to 0.

Then, for the larger run, it renders the Overview, Disagreements and Probability deltas pages
with Streamlit's AppTest (as tests/app does) and prints each page's server time: the first
render (cold: its files read, after one render of the small run has imported the app) and a
second one (warm: the caches of ui/cache.py).

Usage: python bench/memory.py [--rows 50000] [--small 5000] [--work DIR [--pages-only]]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PAGES = ("overview", "disagreements", "deltas")


def build_demo(home: Path) -> tuple[Path, Path]:
    """The demo's SavedModel and data CSV in `home`, built by `python -m core demo` if absent."""
    sys.path.insert(0, str(REPO))
    from core.inputs.demo_paths import demo_paths

    paths = demo_paths(home)
    if not paths.ready():
        print("building the demo (a few minutes) ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "core", "demo"],
            cwd=REPO,
            env=_env(home),
            check=True,
            capture_output=True,
        )
    return paths.saved_model, paths.data_csv


def make_dataset(demo_csv: Path, out: Path, rows: int) -> Path:
    """A CSV of `rows` images: hard links to the demo's images under new names, cycled."""
    with demo_csv.open(encoding="utf-8") as f:
        reader = csv.DictReader(f)
        path_column = next(c for c in reader.fieldnames or [] if c != "label")
        source = [(demo_csv.parent / r[path_column], r["label"]) for r in reader]
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"data_{rows}.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "label"])
        for i in range(rows):
            image, label = source[i % len(source)]
            name = images / f"{i:06d}{image.suffix}"
            if not name.exists():
                os.link(image, name)
            writer.writerow([f"images/{name.name}", label])
    return csv_path


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "QUANTLENS_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"}


def tree_rss_kb(root: int) -> int:
    """Sum of VmRSS (kB) over `root` and every descendant, read from /proc (0 once gone)."""
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        try:
            status = Path(f"/proc/{pid}/status").read_text()
            for task in Path(f"/proc/{pid}/task").iterdir():
                stack.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        total += next(
            (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")),
            0,
        )
    return total


def run_local(model: Path, data: Path, home: Path, run_id: str) -> dict[str, float]:
    """One `core run` at float16 on the local engine: wall seconds and peak RSS figures (MB)."""
    out = home / "runs" / run_id
    command = [
        sys.executable,
        "-m",
        "core",
        "run",
        str(model),
        "--data",
        str(data),
        "--modes",
        "float16",
        "--engine",
        "local",
        "--out",
        str(out),
    ]
    # A fresh wrapper per run: RUSAGE_CHILDREN keeps the largest descendant it ever waited for.
    wrapper = (
        "import resource, subprocess, sys; "
        "code = subprocess.run(sys.argv[1:]).returncode; "
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.exit(code)"
    )
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", wrapper, *command],
        cwd=REPO,
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak_tree = 0
    while process.poll() is None:
        peak_tree = max(peak_tree, tree_rss_kb(process.pid))
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    stdout, stderr = process.communicate()
    if process.returncode not in (0, 1):
        raise SystemExit(f"core run failed ({process.returncode}):\n{stderr[-3000:]}")
    largest = next(int(ln.split()[1]) for ln in stdout.splitlines() if ln.startswith("PEAK_KB"))
    return {"seconds": seconds, "tree_mb": peak_tree / 1024, "largest_mb": largest / 1024}


def page_seconds(home: Path, run_id: str, page: str) -> tuple[float, float]:
    """Server seconds of a cold and a warm AppTest render of `views/<page>.py` for the run."""
    from streamlit.testing.v1 import AppTest

    os.environ["QUANTLENS_HOME"] = str(home)
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=600)
    from ui import keys

    at.session_state[keys.SELECTED_RUN] = run_id
    at.switch_page(f"views/{page}.py")
    times = []
    for _ in range(2):
        started = time.perf_counter()
        at.run()
        times.append(time.perf_counter() - started)
        if at.exception:
            raise SystemExit(f"{page} raised: {[e.value for e in at.exception]}")
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--small", type=int, default=5_000)
    parser.add_argument("--work", type=Path, default=None, help="keep files here (default: tmp)")
    parser.add_argument(
        "--pages-only", action="store_true", help="only render the pages of the runs in --work"
    )
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="quantlens-bench-memory-"))
    home = work / "home"
    model, demo_csv = build_demo(home)
    print(f"work folder {work}", flush=True)
    results: dict[int, dict[str, float]] = {}
    if not args.pages_only:
        for rows in (args.small, args.rows):
            data = make_dataset(demo_csv, work / "data", rows)
            results[rows] = run_local(model, data, home, f"bench-memory-{rows}")
            r = results[rows]
            print(
                f"{rows:>6} images: {r['seconds']:7.1f} s ({1000 * r['seconds'] / rows:.2f} s "
                f"per 1,000 images), peak RSS of the process tree {r['tree_mb']:.0f} MB, "
                f"largest process {r['largest_mb']:.0f} MB",
                flush=True,
            )
        small, large = results[args.small], results[args.rows]
        per_k = (args.rows - args.small) / 1000
        print(
            f"slope: {(large['tree_mb'] - small['tree_mb']) / per_k:+.2f} MB per 1,000 images "
            f"(process tree), {(large['largest_mb'] - small['largest_mb']) / per_k:+.2f} MB "
            f"(largest process); {(large['seconds'] - small['seconds']) / per_k:.2f} s per "
            "1,000 images",
            flush=True,
        )
    # A first render of the small run imports Streamlit, plotly and the app's modules, so the
    # times below are the pages' own work on the large run, not the process warming up.
    page_seconds(home, f"bench-memory-{args.small}", "overview")
    for page in PAGES:
        cold, warm = page_seconds(home, f"bench-memory-{args.rows}", page)
        print(f"page {page:<14} {cold:6.2f} s first render, {warm:6.2f} s again", flush=True)


if __name__ == "__main__":
    main()
