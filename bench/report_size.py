"""Benchmark: report.json's size and the seconds one write takes, for many classes.

Synthesises a run of C classes (default 1,000) and V variants (default 5) through the real
report-building code: per-sample probabilities for N images (the original's and each
variant's, the variant flipping a realistic share of them between nearby classes), then
`core.metrics.agreement.agreement`, `core.reporting.report.finished_variant` and the worker's
own `ReportFile.save` (the locked read-modify-write every stage makes). No TensorFlow.

Prints the report's size on disk, the seconds per write (median of --writes rewrites, as a
worker rewrites report.json after every variant, step and sweep point), and the size of the
store's copy of the report.

Usage: python bench/report_size.py [--classes 1000] [--variants 5] [--images 5000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODES = ("float32", "dynamic", "float16", "int8", "int8-uint8", "int4w_q")


def probabilities(rng: np.random.Generator, n: int, classes: int, top: np.ndarray) -> np.ndarray:
    """[n, classes] softmax rows peaked at `top` (an image's predicted class)."""
    logits = rng.normal(0.0, 1.0, size=(n, classes)).astype(np.float32)
    logits[np.arange(n), top] += 6.0
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    probs: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return probs


def build_report(
    run_dir: Path, *, classes: int, variants: int, images: int
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A finished report.json in `run_dir`, written the way the worker writes it.

    Returns each variant's (original's top-1, variant's top-1) per image, for a check.
    """
    from core.engine.stages.context import ReportFile
    from core.metrics.agreement import agreement
    from core.reporting.report import ROLE_SELECTED, finished_variant, pending_variant
    from core.reporting.runmodel import SCHEMA_VERSION
    from core.reporting.sections.variant import Variant
    from core.types import VariantSpec

    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, size=images)
    ref_top = np.where(rng.random(images) < 0.75, labels, rng.integers(0, classes, size=images))
    ref = probabilities(rng, images, classes, ref_top)
    specs = [VariantSpec.parse(m) for m in MODES[:variants]]
    report = ReportFile(
        run_dir / "report.json",
        {
            "schema_version": SCHEMA_VERSION,
            "run": {"id": run_dir.name, "name": "bench", "status": "running"},
            "reference": {"size_bytes": 14_000_000, "num_classes": classes},
            "dataset": {
                "num_samples": images,
                "class_names": [f"class_{i:04d}" for i in range(classes)],
            },
            "options": {"min_agreement_pct": 95.0},
            "variants": [pending_variant(s, role=ROLE_SELECTED) for s in specs],
        },
    )
    report.save()
    tops: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i, spec in enumerate(specs):
        # Each variant flips 1-8 % of the images, mostly to a neighbouring class.
        flip = rng.random(images) < 0.01 + 0.015 * i
        tfl_top = np.where(flip, (ref_top + rng.integers(1, 4, size=images)) % classes, ref_top)
        tfl = probabilities(rng, images, classes, tfl_top)
        entry = finished_variant(
            report.variant(spec.name),
            size_bytes=14_000_000 // (i + 1),
            reference_size=14_000_000,
            agreement=agreement(ref, tfl, labels=labels),
            reference=report.reference,
            min_agreement_pct=95.0,
            conversion_seconds=1.0,
            conversion_cached=False,
            conversion_route="saved_model",
            select_tf_ops_used=(),
            softmax_applied=False,
            io={},
            warnings=[],
        )
        report.put_variant(Variant.from_dict(entry))
        report.save()
        tops[spec.name] = (ref.argmax(axis=1), tfl.argmax(axis=1))
    return tops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--variants", type=int, default=5)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--writes", type=int, default=10)
    args = parser.parse_args()

    from core.engine.stages.context import ReportFile
    from core.history.rows import variant_row
    from core.reporting.runmodel import report_from

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        build_report(run_dir, classes=args.classes, variants=args.variants, images=args.images)
        path = run_dir / "report.json"
        report = ReportFile.open(run_dir)
        seconds = []
        for _ in range(args.writes):
            start = time.perf_counter()
            report.save()
            seconds.append(time.perf_counter() - start)
        # What the store keeps of the report: each variant's row, its entry as metrics JSON.
        store_copy = sum(
            len(json.dumps(variant_row(v).metrics)) for v in report_from(report.data).variants
        )
        print(
            f"{args.classes} classes x {args.variants} variants, {args.images} images: "
            f"report.json {path.stat().st_size / 1e6:.3f} MB, "
            f"{statistics.median(seconds):.4f} s per write (median of {args.writes}), "
            f"store copy {store_copy / 1e6:.3f} MB"
        )


if __name__ == "__main__":
    main()
