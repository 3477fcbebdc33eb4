"""Benchmark: cross-layer equalization on keras.applications MobileNetV2 (alpha 1.0, 224x224,
untrained weights: the arithmetic does not care what the weights learned).

Prints, per ReLU6 policy, the pairs equalized and skipped and the seconds spent, apart:
cloning the model (Keras rebuilds every layer), the images' forward pass for per-channel
pre-activation ranges (only when images are given), and equalizing (the scale sweeps and
writing the weights back). The target is equalization under 2 s. "if_unclipped" runs on 16 random images (it needs them to check the clip);
"replace" and "skip" are data-free.

Usage: python bench/equalize.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import keras
    import numpy as np

    from core.engine.equalize import equalize

    keras.utils.set_random_seed(0)
    started = time.perf_counter()
    model = keras.applications.MobileNetV2(input_shape=(224, 224, 3), alpha=1.0, weights=None)
    print(f"MobileNetV2-1.0-224 built in {time.perf_counter() - started:.1f} s", flush=True)
    images = np.random.default_rng(0).uniform(-1, 1, (16, 224, 224, 3)).astype(np.float32)
    for policy, given in (("skip", None), ("replace", None), ("if_unclipped", images)):
        _, record = equalize(model, given, relu6=policy)  # type: ignore[arg-type]
        print(
            f"relu6={policy:<13} pairs {len(record.pairs):>3}  skipped {len(record.skipped):>3}  "
            f"sweeps {record.iterations:>2}  clone {record.clone_seconds:.2f} s  "
            f"image statistics {record.statistics_seconds:.2f} s  "
            f"equalize {record.equalize_seconds:.2f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
