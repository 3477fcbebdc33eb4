"""Benchmark: the whole `--auto-fix` on the MobileNetV2 demo, and the fix ladder's own costs.

On the embedded MobileNetV2-0.35 demo (96x96, the demo's 628 held-out digits; its `.keras`
file, so every rung of the ladder applies, equalization included), in one session:

- auto-fix: wall time of `python -m core run MODEL --modes int8 --min-agreement 99 --auto-fix`
  against the same run without `--auto-fix` (its floor: the run the ladder is added to), with
  the seconds of the run's diagnosis and auto-fix stages from its progress events. The demo's
  int8 keeps about 98.7 % top-1 agreement, above the default 95 % bar, so at that bar the
  ladder has nothing to repair; the bench asks for 99 % (`--min-agreement`) so the ladder runs;
- the ladder's cheap signals: core.engine.causes.find_causes on the demo's int8 variant
  (bench/causes.py on the demo's SavedModel; target under 1 s per variant);
- equalization itself on keras.applications MobileNetV2-1.0-224 (bench/equalize.py; target
  under 2 s; it is arithmetic on weights).

The demo is the workspace's when it is built (`python -m core demo`), else it is built into a
temporary folder first (a few minutes). Raw figures go to bench/results/auto_fix.json, and the
auto-fix run's report.json is kept there too (auto_fix.report.json) for the docs' rung table.

Usage: python bench/auto_fix.py [--demo DEMO_ROOT] [--min-agreement 99] [--threads 2]
       [--latency-runs 50]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def demo_root(given: Path | None, work: Path) -> Path:
    """A built demo folder: the one given, the workspace's, or a fresh one under `work`."""
    from core.inputs.demo_paths import demo_root as workspace_demo
    from core.inputs.demo_paths import mobilenet_demo_paths

    for root in (given, workspace_demo()):
        if root is not None and mobilenet_demo_paths(root=root).ready():
            return root
    if given is not None:
        raise SystemExit(f"no built MobileNetV2 demo in {given}; run `python -m core demo` there")
    root = work / "demo"
    print(f"building the demo into {root} (a few minutes, once)", flush=True)
    env = {**os.environ, "QUANTLENS_HOME": str(work / "home"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(
        [sys.executable, "-m", "core", "demo", "--out", str(root)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the demo build failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return root


def timed_run(
    model: Path, data: Path, home: Path, args: argparse.Namespace, *, auto_fix: bool
) -> tuple[float, Path]:
    """Wall seconds of one `core run` with a cold conversion cache, and its run folder."""
    run_dir = home / "run"
    command = [
        sys.executable,
        "-m",
        "core",
        "run",
        str(model),
        "--data",
        str(data),
        "--modes",
        "int8",
        "--threads",
        str(args.threads),
        "--latency-runs",
        str(args.latency_runs),
        "--min-agreement",
        str(args.min_agreement),
        "--out",
        str(run_dir),
    ]
    command += ["--auto-fix"] if auto_fix else []  # last: its K is optional
    env = {**os.environ, "QUANTLENS_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"core run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return seconds, run_dir


def stage_seconds(run_dir: Path) -> dict[str, float]:
    """Seconds of the diagnosis and auto-fix stages (the fix's own conversion and evaluation
    included), from the first event of each to the first event of the next stage."""
    events = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]

    def first(step: str) -> float | None:
        return next((e["time"] for e in events if e["step"] == step), None)

    marks = {
        "diagnosis": first("diagnose"),
        "auto-fix": first("auto-fix"),
        "timing": first("latency"),
    }
    found = sorted((t, name) for name, t in marks.items() if t is not None)
    ends = [t for t, _ in found[1:]] + [events[-1]["time"]]
    return {name: end - t for (t, name), end in zip(found, ends, strict=True) if name != "timing"}


def search_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The int8 variant's search: evaluations spent, candidates, the choice and its verdict."""
    parent = next(v for v in report["variants"] if v["name"] == "int8")
    search = (parent.get("auto_fix") or {}).get("search") or {}
    chosen = next((v for v in report["variants"] if v.get("derived_by") == "auto-fix"), None)
    return {
        "parent_agreement_pct": parent.get("top1_agreement_pct"),
        "evaluations": search.get("evaluations"),
        "candidates": len(search.get("candidates") or []),
        "chosen": None if chosen is None else chosen["name"],
        "chosen_agreement_pct": None if chosen is None else chosen.get("top1_agreement_pct"),
    }


def signals_seconds(saved_model: Path) -> tuple[float, float, str]:
    """bench/causes.py on the demo's SavedModel: median wall and CPU seconds of find_causes per
    variant (on a shared machine the wall time mostly measures the neighbours)."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "causes.py"), "--saved-model", str(saved_model)],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("find_causes"))
    wall = re.search(r"([0-9.]+) s wall, ([0-9.]+) s CPU", line)
    if wall is None:
        raise SystemExit(f"bench/causes.py printed no timing: {line}")
    return float(wall.group(1)), float(wall.group(2)), line


def equalize_seconds() -> dict[str, float]:
    """bench/equalize.py: seconds spent equalizing MobileNetV2-1.0-224, per ReLU6 policy."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "equalize.py")],
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        check=True,
    )
    found = re.findall(r"relu6=(\S+).*?equalize ([0-9.]+) s", done.stdout)
    return {policy: float(seconds) for policy, seconds in found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=None, help="a built demo folder")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--latency-runs", type=int, default=50)
    parser.add_argument(
        "--min-agreement",
        type=float,
        default=99.0,
        help="the bar the ladder repairs to (the demo's int8 meets the default 95 %%)",
    )
    args = parser.parse_args()
    from core.inputs.demo_paths import mobilenet_demo_paths

    work = Path(tempfile.mkdtemp(prefix="quantlens-bench-autofix-"))
    demo = mobilenet_demo_paths(root=demo_root(args.demo, work))
    load_before = os.getloadavg()[0]
    plain_s, _ = timed_run(demo.keras_model, demo.data_csv, work / "plain", args, auto_fix=False)
    fixed_s, run_dir = timed_run(
        demo.keras_model, demo.data_csv, work / "fixed", args, auto_fix=True
    )
    report = json.loads((run_dir / "report.json").read_text())
    stages = stage_seconds(run_dir)
    search = search_summary(report)
    signals_s, signals_cpu_s, signals_line = signals_seconds(demo.saved_model)
    equalize_s = equalize_seconds()
    load_after = os.getloadavg()[0]

    chosen = search["chosen"] or "nothing derived"
    print(
        f"auto-fix, MobileNetV2-0.35 demo (int8, n={report['dataset']['num_samples']}, "
        f"--min-agreement {args.min_agreement:g}): "
        f"{fixed_s:.1f} s whole against {plain_s:.1f} s without --auto-fix "
        f"({fixed_s / plain_s:.2f}x); diagnosis {stages.get('diagnosis', 0.0):.1f} s, "
        f"auto-fix stage {stages.get('auto-fix', 0.0):.1f} s "
        f"({search['evaluations']} evaluations, {search['candidates']} candidates, "
        f"chose {chosen})"
    )
    print(
        f"root-cause signals per variant: {signals_s:.2f} s wall, {signals_cpu_s:.2f} s CPU "
        "(target < 1 s)"
    )
    print(
        "equalization, MobileNetV2-1.0-224: "
        + ", ".join(f"{policy} {s:.2f} s" for policy, s in equalize_s.items())
        + f" (target < 2 s); load average {load_before:.1f} -> {load_after:.1f} "
        f"on {os.cpu_count()} cores"
    )
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    shutil.copyfile(run_dir / "report.json", out / "auto_fix.report.json")
    results = {
        "demo": str(demo.keras_model),
        "auto_fix_s": fixed_s,
        "without_auto_fix_s": plain_s,
        "auto_fix_over_without": fixed_s / plain_s,
        "stages_s": stages,
        "search": search,
        "min_agreement_pct": args.min_agreement,
        "signals_s": signals_s,
        "signals_cpu_s": signals_cpu_s,
        "signals_line": signals_line,
        "equalize_s": equalize_s,
        "load_average": [load_before, load_after],
    }
    (out / "auto_fix.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
