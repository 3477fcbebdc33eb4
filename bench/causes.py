"""Benchmark: the root-cause signals (core.engine.causes.find_causes) of one int8 variant.

On a MobileNetV2-0.35 at 96x96 (the demo's architecture; a trained demo's SavedModel with
--saved-model, else untrained weights, which time the same) and scikit-learn's digits stretched
to 96x96 with the MobileNetV2 preset: converts float32 and int8 (calibrated on the same images)
once, then times find_causes on N calibration and N evaluated images. The target is under 1 s
per variant with N = 50. It also prints the extremes of each signal over the model's tensors
and ops, and the causes named, to check the thresholds against a healthy model.

Usage: python bench/causes.py [--images 50] [--repeat 3] [--saved-model PATH]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZE = 96


def digits(count: int) -> np.ndarray:
    """Dark ink on white paper, as the demo writes them, in the MobileNetV2 preset's [-1, 1]."""
    from sklearn.datasets import load_digits

    images = load_digits().images[: 2 * count]
    paper = 255.0 - images * (255.0 / 16.0)
    big = np.kron(paper, np.ones((1, SIZE // 8, SIZE // 8)))
    return (np.repeat(big[..., None], 3, axis=-1) / 127.5 - 1.0).astype(np.float32)


def convert(saved_model: Path, calibration: np.ndarray | None) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([x[None]] for x in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return bytes(converter.convert())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--saved-model", type=Path, default=None)
    args = parser.parse_args()

    from core.engine.causes import find_causes

    images = digits(args.images)
    calibration, evaluated = images[: args.images], images[args.images :]
    with tempfile.TemporaryDirectory() as tmp:
        saved_model = args.saved_model
        if saved_model is None:
            import keras

            from core.engine.demo_models import mobilenet_v2_digits

            keras.utils.set_random_seed(0)
            saved_model = Path(tmp) / "mobilenet_v2"
            mobilenet_v2_digits().export(str(saved_model), verbose=False)
        float_tflite = convert(saved_model, None)
        int8_tflite = convert(saved_model, calibration)

    seconds, cpu = [], []
    for _ in range(args.repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        found = find_causes(float_tflite, int8_tflite, calibration=calibration, evaluated=evaluated)
        seconds.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    # CPU seconds too: on a shared machine the wall time mostly measures the neighbours.
    print(
        f"find_causes, MobileNetV2-0.35 {SIZE}x{SIZE} int8, {found.calibration_images} "
        f"calibration + {found.evaluated_images} evaluated images: "
        f"{statistics.median(seconds):.2f} s wall, {statistics.median(cpu):.2f} s CPU "
        f"(median of {len(seconds)}; min {min(seconds):.2f} s wall); "
        f"{len(found.activations)} activations, {len(found.weights)} weighted ops; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    ratios = [(s.range_ratio, s.layer) for s in found.activations if s.range_ratio is not None]
    levels = [(s.used_levels, s.layer) for s in found.activations if s.used_levels is not None]
    clips = [(s.clip_rate, s.layer) for s in found.activations if s.clip_rate is not None]
    spreads = [(w.group_spread, w.layer) for w in found.weights if w.group_spread is not None]
    kurtosis = [(w.kurtosis, w.layer) for w in found.weights if w.kurtosis is not None]
    print(f"largest activation range ratio: {max(ratios)[0]:.1f} ({max(ratios)[1]})")
    print(f"fewest levels used by a typical channel: {min(levels)[0]:.1f} ({min(levels)[1]})")
    print(f"largest clipping rate: {max(clips)[0]:.2e} ({max(clips)[1]})")
    print(f"largest weight group spread: {max(spreads)[0]:.1f} ({max(spreads)[1]})")
    print(f"largest weight kurtosis: {max(kurtosis)[0]:.1f} ({max(kurtosis)[1]})")
    for cause in found.causes:
        print(f"cause: {cause.cause}: {cause.words}")
    if not found.causes:
        print("causes: none")


if __name__ == "__main__":
    main()
