"""Benchmark: `python -m core run` against the compute floor and a naive tutorial loop.

On a MobileNetV2 at 224x224 (weights=None, 10 classes, saved as a SavedModel) and N generated
JPEG files, with modes float32,float16,dynamic,int8, this measures in one session:

- ours:  wall time of `python -m core run` (a subprocess: process start, TF import, decoding,
         reference pass, four conversions, inference, latency runs, metrics, files);
- floor: the same work done the seed's way, lean, in this process: the four conversions,
         one batched reference pass, one invoke per image per variant, decoding each image
         once, and the latency runs ours did (the same count per model, batch 1, after the
         same warm-up, read from ours' report.json);
- naive: a loop as a tutorial writes it: the same four conversions, then per image: load it,
         `model.predict` on one sample, and invoke each interpreter;
- memory: the worker's peak RSS for N/5 and for N images (it must not grow with N beyond
         the per-sample records);
- quantizer: the same run with `--backend quantizer` (float32 from the converter once, then
         LiteRT Quantizer recipes for float16, dynamic and int8), its wall time against the
         floor, and per mode and backend the seconds per conversion and the top-1 agreement.

The floor does no per-layer diagnosis (the seed had none), so the quantizer's ratio is also
given without its diagnosis stage. Until 2026-12-02 the floor did no latency runs while ours
did; that ratio is printed too, to compare with the figures from before. Each run's seconds
per stage (process start, load, decode + reference, waiting for the float32 pivot's
conversion, evaluation, diagnosis, timing) are printed from its events.

The machine is shared and noisy, so only ratios measured in the same run are meaningful.
Usage: python bench/pipeline.py [--images 500] [--size 224] [--threads 2] [--skip-naive]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODES = ("float32", "float16", "dynamic", "int8")
CALIBRATION = 100


def make_model(root: Path, size: int) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3), classes=10)
    path = root / "mobilenet_v2"
    model.export(str(path), verbose=False)
    return path


def make_images(root: Path, count: int, size: int) -> Path:
    """Smooth random colour fields saved as JPEG (photo-like sizes, not noise)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((size + 32, size + 16), Image.Resampling.BICUBIC)
        relpath = f"images/{i:04d}.jpg"
        (root / relpath).parent.mkdir(parents=True, exist_ok=True)
        image.save(root / relpath, quality=90)
        rows.append((relpath, i % 10))
    csv_path = root / "data.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "label"])
        writer.writerows(rows)
    return csv_path


def run_ours(
    model: Path,
    data: Path,
    home: Path,
    *,
    threads: int,
    samples: int | None,
    backend: str = "converter",
) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of the worker for one `core run` with a cold cache."""
    args = [
        sys.executable,
        "-m",
        "core",
        "run",
        str(model),
        "--data",
        str(data),
        "--modes",
        ",".join(MODES),
        "--threads",
        str(threads),
        "--calibration-samples",
        str(CALIBRATION),
        "--out",
        str(home / "run"),
        "--backend",
        backend,
    ]
    if samples:
        args += ["--samples", str(samples)]
    env = {**os.environ, "QUANTLENS_HOME": str(home), "TF_CPP_MIN_LOG_LEVEL": "3"}
    # A fresh wrapper process per run: RUSAGE_CHILDREN keeps the largest descendant ever
    # waited for, so measuring in this process would carry one run's peak into the next.
    wrapper = (
        "import resource, subprocess, sys; "
        "code = subprocess.run(sys.argv[1:]).returncode; "
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
        "sys.exit(code)"
    )
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode not in (0, 1):
        raise SystemExit(f"core run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    peak_kb = next(
        int(line.split()[1]) for line in done.stdout.splitlines() if line.startswith("PEAK_KB")
    )
    return seconds, peak_kb / 1024


def timing_stage_s(run_dir: Path) -> float:
    """Seconds the run spent in its time stage: from the first latency event to the last event."""
    events = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    start = next(e["time"] for e in events if e["step"] == "latency")
    return float(events[-1]["time"] - start)


# Where each stage of the main thread begins, read from progress.jsonl: (label, first event).
# The conversion thread's own events interleave with these and start no stage.
STAGE_STARTS: tuple[tuple[str, Callable[[dict[str, Any]], bool]], ...] = (
    ("decode + reference", lambda e: e["step"] == "decode"),
    (
        "waiting for the pivot's conversion",
        lambda e: e["step"] == "convert" and e["message"].startswith("waiting for float32"),
    ),
    ("evaluation", lambda e: e["step"] == "infer"),
    ("diagnosis", lambda e: e["step"] == "diagnose"),
    ("timing", lambda e: e["step"] == "latency"),
)


def stage_profile(run_dir: Path, wall_s: float) -> dict[str, float]:
    """Seconds per stage of one run, in order; what came before the first event (process
    start, imports) is the wall time minus the events' span. Stages that did not happen (no
    wait for a conversion, no diagnosis) are left out."""
    events = [json.loads(line) for line in (run_dir / "progress.jsonl").read_text().splitlines()]
    span = events[-1]["time"] - events[0]["time"]
    starts = [("load", events[0]["time"])]
    for label, begins in STAGE_STARTS:
        first = next((e["time"] for e in events if begins(e)), None)
        if first is not None:
            starts.append((label, first))
    starts.sort(key=lambda mark: mark[1])
    ends = [t for _, t in starts[1:]] + [events[-1]["time"]]
    profile = {"process start + imports": wall_s - span}
    profile.update({label: end - t for (label, t), end in zip(starts, ends, strict=True)})
    return profile


def print_profile(name: str, profile: dict[str, float]) -> None:
    print(f"{name}: " + ", ".join(f"{label} {s:.1f} s" for label, s in profile.items()))


def per_mode(report_path: Path) -> dict[str, dict[str, float | None]]:
    """Mode -> conversion seconds and top-1 agreement of one run's variants."""
    report = json.loads(report_path.read_text())
    return {
        v["mode"]: {
            "conversion_s": v["conversion_seconds"],
            "agreement_pct": v["top1_agreement_pct"],
        }
        for v in report["variants"]
    }


def decode(path: Path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return (
            np.asarray(
                im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32
            )
            / 127.5
            - 1
        )


def convert_all(model: Path, calibration: np.ndarray) -> dict[str, bytes]:
    import tensorflow as tf

    out = {}
    for mode in MODES:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(model))
        if mode != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if mode == "int8":
            converter.representative_dataset = lambda: (
                [calibration[i : i + 1]] for i in range(len(calibration))
            )
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
        out[mode] = converter.convert()
    return out


def interpreters(models: dict[str, bytes], threads: int) -> dict[str, object]:
    from ai_edge_litert.interpreter import Interpreter

    result = {}
    for mode, data in models.items():
        it = Interpreter(model_content=data, num_threads=threads)
        it.allocate_tensors()
        result[mode] = it
    return result


def invoke(it: object, x: np.ndarray) -> np.ndarray:
    inp = it.get_input_details()[0]  # type: ignore[attr-defined]
    out = it.get_output_details()[0]  # type: ignore[attr-defined]
    if inp["dtype"] != np.float32:
        scale, zp = inp["quantization"]
        x = np.clip(np.round(x / scale + zp), -128, 127).astype(inp["dtype"])
    it.set_tensor(inp["index"], x)  # type: ignore[attr-defined]
    it.invoke()  # type: ignore[attr-defined]
    return it.get_tensor(out["index"])  # type: ignore[attr-defined,no-any-return]


def latency_protocol(report_path: Path) -> tuple[int, dict[str, int]]:
    """Warm-up calls and the timed runs per model (`reference` and each mode) of one run."""
    report = json.loads(report_path.read_text())
    runs = {"reference": int(report["reference"]["latency_ms"]["n"])}
    runs.update({v["mode"]: int(v["latency_ms"]["n"]) for v in report["variants"]})
    return int(report["options"]["warmup_runs"]), runs


def floor(
    model: Path,
    paths: list[Path],
    size: int,
    threads: int,
    latency: tuple[int, dict[str, int]],
) -> dict[str, float]:
    """The same work done the seed's way, lean: decode once, one batched reference pass, 4
    conversions, N invokes each, and `latency` (warm-up, runs per model) timed at batch 1."""
    import tensorflow as tf

    phases: dict[str, float] = {}
    started = time.perf_counter()
    images = np.stack([decode(p, size) for p in paths])
    phases["decode"] = time.perf_counter() - started
    mark = time.perf_counter()
    serve = tf.saved_model.load(str(model)).signatures["serving_default"]
    name = next(iter(serve.structured_input_signature[1]))
    for start in range(0, len(images), 32):
        serve(**{name: tf.constant(images[start : start + 32])})
    phases["reference"] = time.perf_counter() - mark
    rng = np.random.default_rng(1)
    calibration = images[rng.choice(len(images), size=min(CALIBRATION, len(images)), replace=False)]
    mark = time.perf_counter()
    converted = convert_all(model, calibration)
    phases["convert"] = time.perf_counter() - mark
    mark = time.perf_counter()
    its = interpreters(converted, threads)
    for it in its.values():
        for image in images:
            invoke(it, image[None])
    phases["invoke"] = time.perf_counter() - mark
    mark = time.perf_counter()
    warmup, runs = latency
    one = tf.constant(images[:1])
    for _ in range(warmup + runs["reference"]):
        serve(**{name: one})
    for mode, it in its.items():
        for _ in range(warmup + runs[mode]):
            invoke(it, images[:1])
    phases["latency"] = time.perf_counter() - mark
    phases["total"] = time.perf_counter() - started
    return phases


def naive(model: Path, paths: list[Path], size: int, threads: int) -> dict[str, float]:
    """The tutorial loop: convert, then per image load it, model.predict one sample, invoke each."""
    import keras

    started = time.perf_counter()
    rng = np.random.default_rng(1)
    chosen = rng.choice(len(paths), size=min(CALIBRATION, len(paths)), replace=False)
    calibration = np.stack([decode(paths[i], size) for i in chosen])
    its = interpreters(convert_all(model, calibration), threads)
    converted = time.perf_counter()
    reference = keras.layers.TFSMLayer(str(model), call_endpoint="serving_default")
    wrapped = keras.Sequential([keras.Input((size, size, 3)), reference])
    for path in paths:
        x = decode(path, size)[None]
        wrapped.predict(x, verbose=0)
        for it in its.values():
            invoke(it, x)
    end = time.perf_counter()
    return {"convert": converted - started, "loop": end - converted, "total": end - started}


def print_per_mode(table: dict[str, dict[str, dict[str, float | None]]]) -> None:
    def cell(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    print(f"{'mode':<9} {'convert s':>10} {'quantize s':>11} {'agree conv':>11} {'agree q':>9}")
    for mode in MODES:
        conv = table["converter"].get(mode, {})
        quant = table["quantizer"].get(mode, {})
        print(
            f"{mode:<9} {cell(conv.get('conversion_s'), '10.2f')} "
            f"{cell(quant.get('conversion_s'), '11.2f')} "
            f"{cell(conv.get('agreement_pct'), '10.2f')}% {cell(quant.get('agreement_pct'), '8.2f')}%"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--skip-naive",
        action="store_true",
        help="leave out the naive tutorial loop (minutes; it runs none of our code)",
    )
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    load_start = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="quantlens-bench-"))
    print(f"bench folder: {work}", flush=True)
    model = make_model(work, args.size)
    data = make_images(work / "data", args.images, args.size)
    paths = [data.parent / f"images/{i:04d}.jpg" for i in range(args.images)]

    ours_s, ours_rss = run_ours(model, data, work / "home_full", threads=args.threads, samples=None)
    print(
        f"ours:  {ours_s:7.1f} s  (peak worker RSS {ours_rss:.0f} MB, {args.images} images)",
        flush=True,
    )
    quant_s, quant_rss = run_ours(
        model,
        data,
        work / "home_quantizer",
        threads=args.threads,
        samples=None,
        backend="quantizer",
    )
    print(f"quantizer: {quant_s:7.1f} s  (peak worker RSS {quant_rss:.0f} MB)", flush=True)
    small = max(args.images // 5, 1)
    _, small_rss = run_ours(model, data, work / "home_small", threads=args.threads, samples=small)
    print(f"       peak worker RSS {small_rss:.0f} MB with {small} images", flush=True)
    # TensorFlow in this process already runs on every core (make_model initialised it), which
    # is what --threads defaults to; pass --threads equal to the core count for a fair floor.
    protocol = latency_protocol(work / "home_full" / "run" / "report.json")
    floor_phases = floor(model, paths, args.size, args.threads, protocol)
    floor_s = floor_phases["total"]
    floor_without_latency_s = floor_s - floor_phases["latency"]
    detail = ", ".join(f"{k} {v:.1f} s" for k, v in floor_phases.items() if k != "total")
    print(
        f"floor: {floor_s:7.1f} s  ({detail}; latency: {protocol[0]} warm-up + "
        f"{sum(protocol[1].values())} runs over {len(protocol[1])} models, as ours)",
        flush=True,
    )
    ours_timing = timing_stage_s(work / "home_full" / "run")
    quant_timing = timing_stage_s(work / "home_quantizer" / "run")
    print(f"timing stage: ours {ours_timing:.1f} s, quantizer {quant_timing:.1f} s", flush=True)
    ours_profile = stage_profile(work / "home_full" / "run", ours_s)
    quant_profile = stage_profile(work / "home_quantizer" / "run", quant_s)
    print_profile("ours, per stage", ours_profile)
    print_profile("quantizer, per stage", quant_profile)
    # Diagnosis is work the floor does not do: the like-for-like ratio drops it.
    quant_diagnosis = quant_profile.get("diagnosis", 0.0)
    quant_lean = quant_s - quant_diagnosis
    modes = {
        "converter": per_mode(work / "home_full" / "run" / "report.json"),
        "quantizer": per_mode(work / "home_quantizer" / "run" / "report.json"),
    }
    rss_growth = (ours_rss - small_rss) / ((args.images - small) / 100)
    results: dict[str, object] = {
        "images": args.images,
        "size": args.size,
        "threads": args.threads,
        "ours_s": ours_s,
        "floor_s": floor_s,
        "ours_over_floor": ours_s / floor_s,
        "floor_phases_s": floor_phases,
        "floor_latency_protocol": {"warmup": protocol[0], "runs": protocol[1]},
        "ours_timing_stage_s": ours_timing,
        "quantizer_s": quant_s,
        "quantizer_timing_stage_s": quant_timing,
        "quantizer_over_floor": quant_s / floor_s,
        "quantizer_over_ours": quant_s / ours_s,
        "quantizer_diagnosis_stage_s": quant_diagnosis,
        "quantizer_without_diagnosis_over_floor": quant_lean / floor_s,
        "floor_without_latency_s": floor_without_latency_s,
        "quantizer_over_floor_without_latency": quant_s / floor_without_latency_s,
        "stage_profile_s": {"converter": ours_profile, "quantizer": quant_profile},
        "per_mode": modes,
        "peak_rss_mb": {str(small): small_rss, str(args.images): ours_rss},
        "rss_growth_mb_per_100_images": rss_growth,
    }
    if not args.skip_naive:
        naive_phases = naive(model, paths, args.size, args.threads)
        naive_s = naive_phases["total"]
        print(
            f"naive: {naive_s:7.1f} s  (conversions {naive_phases['convert']:.1f} s, "
            f"loop {naive_phases['loop']:.1f} s)",
            flush=True,
        )
        # Both sides convert the same four models; without that shared cost the evaluation
        # itself is compared: naive's per-image loop against our run minus the floor's
        # conversions.
        results["naive_s"] = naive_s
        results["naive_phases_s"] = naive_phases
        results["naive_over_ours"] = naive_s / ours_s
        results["naive_loop_over_ours_without_conversions"] = naive_phases["loop"] / (
            ours_s - floor_phases["convert"]
        )
    # The machine may be shared: the ratios hold only when the load stayed level, so say it.
    load_end = os.getloadavg()[0]
    results["load_average"] = [load_start, load_end]
    print(
        f"\nload average {load_start:.1f} at the start, {load_end:.1f} at the end "
        f"({os.cpu_count()} cores)"
    )
    print(f"ours / floor = {ours_s / floor_s:.2f}x (target <= 1.1x)")
    if "naive_s" in results:
        print(
            f"naive / ours = {results['naive_over_ours']:.2f}x (target >= 5x); without the four "
            f"conversions both do: {results['naive_loop_over_ours_without_conversions']:.2f}x"
        )
    print(
        f"peak RSS {small_rss:.0f} MB at {small} images vs {ours_rss:.0f} MB at {args.images} images "
        f"({rss_growth:+.1f} MB per 100 images)"
    )
    print(
        f"quantizer / floor = {quant_s / floor_s:.2f}x (target <= 0.6x); without its "
        f"{quant_diagnosis:.1f} s diagnosis stage {quant_lean / floor_s:.2f}x; "
        f"quantizer / ours = {quant_s / ours_s:.2f}x; against the floor without latency runs "
        f"(before 2026-12-02) {quant_s / floor_without_latency_s:.2f}x\n"
    )
    print_per_mode(modes)
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "pipeline.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
