"""Hand-built run directories for AppTest: crafted cases the real engine cannot easily make."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.stats import binomtest

from core.inputs import rundir
from core.reporting.report import no_verdict_reason
from tests.app.expected import mcnemar_p

CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _wilson(k: int, n: int) -> list[float]:
    z = 1.959963984540054
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [100 * (centre - half), 100 * (centre + half)]


def _latency(arr: np.ndarray) -> dict[str, float | int]:
    return {
        "min": float(arr.min()),
        "p50": float(np.percentile(arr, 50)),
        "p90": float(np.percentile(arr, 90)),
        "p99": float(np.percentile(arr, 99)),
        "max": float(arr.max()),
        "mean": float(arr.mean()),
        "std": float(arr.std()),
        "n": int(arr.size),
    }


TIMING_BLOCKS = 5  # the fixture's latency samples are five paired blocks of twelve runs


def _block_medians(arr: np.ndarray) -> list[float]:
    return [float(np.median(b)) for b in np.array_split(arr, TIMING_BLOCKS)]


def _speedup(base: np.ndarray, mine: np.ndarray) -> dict[str, object]:
    """A speed-up entry as the engine writes it, computed here from the arrays."""
    ratios = np.array(_block_medians(base)) / np.array(_block_medians(mine))
    disagree = float(ratios.max() / ratios.min())
    return {
        "value": float(np.median(ratios)),
        "low": float(ratios.min()),
        "high": float(ratios.max()),
        "q1": float(np.percentile(ratios, 25)),
        "q3": float(np.percentile(ratios, 75)),
        "blocks": TIMING_BLOCKS,
        "block_ratios": ratios.tolist(),
        "baseline_block_p50_ms": _block_medians(base),
        "block_p50_ms": _block_medians(mine),
        "unstable": f"unstable: blocks disagree by {disagree:.1f}×" if disagree > 1.5 else None,
    }


def build_data(root: Path, *, n: int = 40, seed: int = 0) -> Path:
    """n tiny 8x8 grey PNGs plus data.csv (filepath,label); returns the CSV path."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        label = i % len(CLASSES)
        arr = (rng.random((8, 8)) * 60).astype(np.uint8)
        arr[1 + label % 6, 1:7] = 255  # a bright bar so thumbnails are visibly not black
        Image.fromarray(arr, mode="L").save(root / "img" / f"s{i:03d}.png")
        rows.append({"filepath": f"img/s{i:03d}.png", "label": label})
    csv = root / "data.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    return csv


def build_run(
    home: Path,
    *,
    run_id: str = "run-fixture",
    n: int = 40,
    flips: dict[str, int] | None = None,
    near_chance: bool = False,
    failed_variant: str | None = "int16x8",
    status: str = "done",
    seed: int = 0,
    sizes: dict[str, int] | None = None,
    legacy_report: bool = False,
    busy_blocks: str | None = None,
) -> Path:
    """Write a complete, self-consistent run directory under `home/runs/run_id`.

    `flips` maps variant name -> how many samples that variant flips to another class (so a
    variant with 0 flips agrees everywhere). Every report number is computed from the arrays
    written here, the way the engine defines it. `near_chance` shifts the original's
    predictions off the labels; the variants then carry the engine's no-verdict reason, unless
    `legacy_report` writes them as a report from before that rule (passed by agreement alone).
    `sizes` overrides variant sizes in bytes (the original is 2.4 MB). Speed-ups are against a
    float32 TFLite baseline timed in the same blocks; `busy_blocks` names a variant whose last
    two blocks ran on a busy machine (its speed-up's blocks then disagree).
    """
    flips = {"float16": 0, "int8": 5} if flips is None else flips
    rng = np.random.default_rng(seed)
    c = len(CLASSES)
    data_root = home / "data"
    csv = build_data(data_root, n=n, seed=seed)
    labels = pd.read_csv(csv)["label"].to_numpy()
    d = rundir.runs_root(home) / run_id
    d.mkdir(parents=True, exist_ok=True)

    logits = rng.normal(0, 1, (n, c))
    truth = (labels + 3) % c if near_chance else labels
    logits[np.arange(n), truth] += 4.0
    ref = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ref_top = ref.argmax(1)
    srt = np.sort(ref, axis=1)
    pd.DataFrame(
        {
            "index": np.arange(n),
            "relpath": pd.read_csv(csv)["filepath"],
            "label": labels,
            "ref_top1": ref_top,
            "ref_top1_prob": ref.max(1),
            "ref_margin": srt[:, -1] - srt[:, -2],
        }
    ).to_csv(d / rundir.SAMPLES, index=False)
    np.save(d / rundir.REFERENCE_PROBS, ref.astype(np.float32))
    ref_lat = 0.5 * rng.gamma(4, 0.5, 60) + 3.0  # quiet enough that the blocks agree
    # float32 TFLite, timed in the same session; its own generator keeps the others' draws.
    baseline_lat = 0.5 * np.random.default_rng(seed + 1).gamma(4, 0.2, 60) + 1.6
    np.save(d / rundir.REFERENCE_LATENCY, ref_lat)
    ref_size = 2_400_000
    ref_acc = 100 * float((ref_top == labels).mean())

    variants = []
    sizes = {
        "float32": 2_300_000,
        "dynamic": 700_000,
        "float16": 1_200_000,
        "int8": 650_000,
        **(sizes or {}),
    }
    # The engine's majority-class test, worked out here: P(X >= correct), X ~ B(n, majority).
    counts = np.bincount(labels)
    correct = int((ref_top == labels).sum())
    baseline = {
        "majority_class": int(counts.argmax()),
        "majority_count": int(counts.max()),
        "n": n,
        "correct": correct,
        "p_value": float(binomtest(correct, n, counts.max() / n, alternative="greater").pvalue),
    }
    ref_section = {"accuracy_pct": ref_acc, "accuracy_baseline": baseline}
    no_verdict = None if legacy_report else no_verdict_reason(ref_section)
    for name, k_flip in flips.items():
        noisy = ref + rng.normal(0, 0.01, ref.shape)
        flipped = rng.choice(n, size=k_flip, replace=False) if k_flip else np.array([], int)
        for i in flipped:
            target = (ref_top[i] + 1) % c
            noisy[i, target] = noisy[i].max() + 0.2
        noisy = np.clip(noisy, 1e-6, None)
        noisy = noisy / noisy.sum(1, keepdims=True)
        tfl_top = noisy.argmax(1)
        agree = tfl_top == ref_top
        delta = np.abs(noisy - ref).max(1)
        d1 = noisy[np.arange(n), ref_top] - ref[np.arange(n), ref_top]
        kl = (ref * np.log(ref / noisy)).sum(1)
        pd.DataFrame(
            {
                "index": np.arange(n),
                "tfl_top1": tfl_top,
                "tfl_top1_prob": noisy.max(1),
                "agree": agree,
                "max_abs_delta": delta,
                "top1_prob_delta": d1,
                "kl": kl,
            }
        ).to_csv(rundir.variant_samples_path(d, rundir.FileId(name)), index=False)
        np.save(rundir.probs_path(d, rundir.FileId(name)), noisy.astype(np.float32))
        lat = 0.5 * rng.gamma(4, 0.2, 60) + 1.0
        if name == busy_blocks:
            lat[36:] *= 4.0
        np.save(rundir.latency_path(d, rundir.FileId(name)), lat)
        speedup = {
            "baseline": "float32",
            **_speedup(baseline_lat, lat),
            "vs_original": _speedup(ref_lat, lat),
        }
        flip_m = np.zeros((c, c), int)
        for i in np.flatnonzero(~agree):
            flip_m[ref_top[i], tfl_top[i]] += 1
        agree_pct = 100 * float(agree.mean())
        size = sizes.get(name, 900_000)
        tfl_acc = 100 * float((tfl_top == labels).mean())
        top5 = np.argsort(-noisy, 1)[:, :5]
        variants.append(
            {
                "name": name,
                "mode": name.split(":")[0].split("-")[0],
                "io_type": None,
                "allow_select_tf_ops": False,
                "status": "done",
                "error": None,
                "size_bytes": size,
                "size_reduction_pct": 100 * (1 - size / ref_size),
                "size_reduction_vs_float32_pct": None,
                "n": n,
                "top1_agreement_pct": agree_pct,
                "top1_agreement_ci95": _wilson(int(agree.sum()), n),
                "k": 5,
                "topk_agreement_pct": 100 * float((top5 == ref_top[:, None]).any(1).mean()),
                "disagreements": int((~agree).sum()),
                "reference_accuracy_pct": ref_acc,
                "tflite_accuracy_pct": tfl_acc,
                "accuracy_delta_pct": tfl_acc - ref_acc,
                "mcnemar_p": mcnemar_p(
                    int(((ref_top == labels) & (tfl_top != labels)).sum()),
                    int(((ref_top != labels) & (tfl_top == labels)).sum()),
                ),
                "max_abs_prob_delta": float(delta.max()),
                "mean_kl": float(kl.mean()),
                "nan_outputs": 0,
                "flip_matrix": flip_m.tolist(),
                "latency_ms": {**_latency(lat), "blocks": [12] * TIMING_BLOCKS},
                "speedup_vs_reference": speedup["vs_original"]["value"],  # type: ignore[index]
                "speedup": speedup,
                "conversion_seconds": 1.5,
                "select_tf_ops_used": [],
                "passed": no_verdict is None and agree_pct >= 95.0,
                "verdict_reason": no_verdict,
            }
        )
    if failed_variant:
        variants.append(
            {
                "name": failed_variant,
                "mode": failed_variant,
                "io_type": None,
                "allow_select_tf_ops": False,
                "status": "crashed",
                "error": "crashed (SIGABRT) during conversion: int16x8 kernel refused at prepare",
                "size_bytes": None,
                "passed": None,
            }
        )
    report = {
        "schema_version": 1,
        "run": {
            "id": run_id,
            "name": "<b>fixture</b> run",
            "created": "2025-01-01T00:00:00Z",
            "status": status,
            "command": f"python -m core run model --data {csv}",
            "trusted": False,
        },
        "reference": {
            "path": str(home / "model.keras"),
            "format": "keras",
            "size_bytes": ref_size,
            "sha256": "0" * 64,
            "input_shape": [None, 8, 8, 3],
            "input_dtype": "float32",
            "num_classes": c,
            "outputs_probabilities": True,
            **ref_section,
            "latency_ms": _latency(ref_lat),
        },
        "dataset": {
            "path": str(csv),
            "kind": "csv",
            "num_samples": n,
            "num_skipped": 0,
            "has_labels": True,
            "class_names": CLASSES,
            "skipped": [],
        },
        "preprocessing": {
            "preset": "unit",
            "height": 8,
            "width": 8,
            "channels": 3,
            "value_range": [0, 1],
        },
        "options": {
            "calibration_samples": 20,
            "max_samples": None,
            "threads": 2,
            "min_agreement_pct": 95.0,
            "seed": 0,
            "latency_runs": 60,
            "warmup_runs": 5,
        },
        "variants": variants,
        "environment": {
            "tensorflow": "2.21.0",
            "litert": "2.3.0",
            "keras": "3.15.0",
            "python": "3.11",
            "numpy": "2.4",
            "platform": "linux",
            "cpu": "x86_64",
            "threads": 2,
        },
    }
    rundir.write_json_atomic(d / rundir.REPORT, report)
    rundir.write_json_atomic(
        d / rundir.JOB, {"model_path": str(home / "model.keras"), "data_path": str(csv)}
    )
    now = time.time()
    rundir.write_json_atomic(
        d / rundir.STATUS,
        {"status": status, "pid": None, "started": now, "finished": now, "error": None},
    )
    (d / rundir.PROGRESS).write_text("", encoding="utf-8")
    _register(home, d, report)
    return d


def _register(home: Path, run_dir: Path, report: dict) -> None:
    """Give the run its store row, as every real run has (the sidebar lists the store)."""
    from core.history.store import open_store
    from core.types import RunStatus

    run = report["run"]
    with open_store(home) as store:
        if store.get_run(run["id"]) is None:
            job = {
                "model_path": report["reference"]["path"],
                "data_path": report["dataset"]["path"],
            }
            store.create_run(run["id"], name=run["name"], run_dir=run_dir, job=job)
        store.sync_report(run["id"], report)
        store.set_status(run["id"], RunStatus(run["status"]))


def read_report(run_dir: Path) -> dict:
    return json.loads((run_dir / rundir.REPORT).read_text())
