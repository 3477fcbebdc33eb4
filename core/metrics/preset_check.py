"""Is the chosen preprocessing preset the right one? The original under every preset, judged.

A wrong preset that does not push the original to chance still yields a confident verdict on
garbage inputs (a MobileNetV3 with its own rescaling, fed `caffe`, is 30 % accurate and every
variant is judged on that). Before a run, the original runs on a few dozen images under every
preset (core.engine.preset_trial); this module judges that trial:

- with labels, another preset is "clearly more accurate" when it is at least
  `MIN_GAIN_PP` points more accurate on the same images and the exact McNemar test on the
  paired right/wrong outcomes gives p < `MAX_P_VALUE`;
- without labels, it is "clearly more confident" when its mean top-1 probability is at least
  `MIN_GAIN_PP` points higher, the sign test over images (the same exact binomial) gives
  p < `MAX_P_VALUE`, and its predictions are not collapsed onto fewer classes (a wrong input
  range often saturates the softmax onto one class: confident, and wrong).

A trial is a plain mapping (JSON from a worker, or report.json):
    {"num_classes": C, "labels": [int or -1 per image],
     "presets": {name: {"top1": [int per image], "confidence": [float per image]}
                       or {"error": "one line"}}}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from core.metrics.agreement import mcnemar_exact

# A few dozen images: enough for the test to see a 15-point gap, cheap under five presets.
CHECK_IMAGES = 48
MIN_GAIN_PP = 15.0
MAX_P_VALUE = 0.01
# A run looks at this many of them first (every other one) and at the rest only when another
# preset is at least half the gain ahead there: a right preset costs half the predictions.
FIRST_LOOK_IMAGES = CHECK_IMAGES // 2
# Fewer labelled images than this: judge by confidence instead of accuracy.
MIN_LABELLED = 10


def check_indices(count: int, wanted: int = CHECK_IMAGES) -> list[int]:
    """Which of `count` samples the check runs on: `wanted` spread evenly over the data set
    (class-folder data sets are sorted by class, so the first few would be one class)."""
    if count <= wanted:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, wanted).round()})


def needs_all_images(first_look: Mapping[str, Any], used: str) -> bool:
    """Whether a trial on the first look's images leaves a preset that may be clearly better
    than `used` on all of them: one at least half of MIN_GAIN_PP ahead. Fewer images can only
    say "not clearly better" sooner; a verdict of "better" is always made on every image."""
    check = judge_presets(first_look, used)
    return any(
        (entry.get("gain_pp") or 0.0) >= MIN_GAIN_PP / 2 for entry in check["presets"].values()
    )


def _arrays(entry: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.asarray(entry["top1"], dtype=np.int64),
        np.asarray(entry["confidence"], dtype=np.float64),
    )


def judge_presets(trial: Mapping[str, Any], used: str) -> dict[str, Any]:
    """report.json's `preset_check`: each preset's accuracy / confidence and n, the preset that
    is clearly better than `used` (or None), the statistics behind it, and one line of advice.
    """
    num_classes = int(trial.get("num_classes") or 0)
    labels = np.asarray(trial.get("labels") or [], dtype=np.int64)
    labelled = (labels >= 0) & ((labels < num_classes) if num_classes else True)
    by_labels = int(labelled.sum()) >= MIN_LABELLED
    presets: dict[str, dict[str, Any]] = {}
    outcomes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, entry in (trial.get("presets") or {}).items():
        if entry.get("error"):
            presets[name] = {"error": str(entry["error"])}
            continue
        top1, confidence = _arrays(entry)
        finite = np.isfinite(confidence)
        outcomes[name] = (top1, confidence)
        presets[name] = {
            "n": len(top1),
            "labelled": int(labelled.sum()),
            "accuracy_pct": (
                float(100.0 * np.mean(top1[labelled] == labels[labelled]))
                if labelled.any()
                else None
            ),
            "confidence_pct": (
                float(100.0 * np.mean(confidence[finite])) if finite.any() else None
            ),
            "distinct_predictions": len(set(top1.tolist())),
        }
    result: dict[str, Any] = {
        "used": used,
        "n": len(labels),
        "labelled": int(labelled.sum()),
        "basis": "accuracy" if by_labels else "confidence",
        "presets": presets,
        "better": None,
        "p_value": None,
        "advice": None,
    }
    if used not in outcomes or not len(labels):
        return result
    clear = []
    for name in outcomes:
        if name == used:
            continue
        gain, p, better = _compare(outcomes[used], outcomes[name], labels, labelled, by_labels)
        presets[name].update(gain_pp=gain, p_value=p)  # against the preset used
        if better:
            clear.append((name, gain, p))
    if not clear:
        return result
    name, _, p = max(clear, key=lambda c: (c[1], -c[2]))
    result["better"] = name
    result["p_value"] = p
    result["advice"] = advice_line(result)
    return result


def _compare(
    used: tuple[np.ndarray, np.ndarray],
    other: tuple[np.ndarray, np.ndarray],
    labels: np.ndarray,
    labelled: np.ndarray,
    by_labels: bool,
) -> tuple[float, float, bool]:
    """(gain in points, p, whether `other` is clearly better than `used`)."""
    if by_labels:
        right_used = used[0][labelled] == labels[labelled]
        right_other = other[0][labelled] == labels[labelled]
        gain = 100.0 * (float(right_other.mean()) - float(right_used.mean()))
        # Paired outcomes on the same images: the exact McNemar test on the discordant pairs.
        p = mcnemar_exact(
            int((right_other & ~right_used).sum()), int((right_used & ~right_other).sum())
        )
        return gain, p, gain >= MIN_GAIN_PP and p < MAX_P_VALUE
    conf_used = np.nan_to_num(used[1], nan=0.0)
    conf_other = np.nan_to_num(other[1], nan=0.0)
    gain = 100.0 * float(conf_other.mean() - conf_used.mean())
    # The sign test over images is the same exact binomial as McNemar's.
    p = mcnemar_exact(int((conf_other > conf_used).sum()), int((conf_other < conf_used).sum()))
    collapsed = len(set(other[0].tolist())) < len(set(used[0].tolist()))
    return gain, p, gain >= MIN_GAIN_PP and p < MAX_P_VALUE and not collapsed


def advice_line(check: Mapping[str, Any]) -> str | None:
    """The one line the CLI, Setup and the report say when another preset is clearly better."""
    better, used = check.get("better"), check.get("used")
    if not better:
        return None
    presets = check["presets"]
    if check.get("basis") == "accuracy":
        what = "accurate"
        mine, theirs = presets[used]["accuracy_pct"], presets[better]["accuracy_pct"]
        images = f"the same {check['labelled']} labelled images"
        test = f"McNemar p = {check['p_value']:.1g}"
    else:
        what = "confident (mean top-1 probability; no labels, so a hint)"
        mine, theirs = presets[used]["confidence_pct"], presets[better]["confidence_pct"]
        images = f"the same {check['n']} images"
        test = f"sign test p = {check['p_value']:.1g}"
    return (
        f"preset check: the original is {theirs:.1f} % {what} with preset {better} but "
        f"{mine:.1f} % with {used} on {images} ({test}); the preset is probably wrong: "
        f"use {better}"
    )


def preset_summary(check: Mapping[str, Any] | None) -> list[str]:
    """Each preset's measured figure in a few words, e.g. ["raw 95.8 %", "caffe 31.3 %"]."""
    if not check:
        return []
    key = "accuracy_pct" if check.get("basis") == "accuracy" else "confidence_pct"
    out: list[str] = []
    for name, entry in (check.get("presets") or {}).items():
        value = entry.get(key)
        out.append(f"{name} {value:.1f} %" if value is not None else f"{name} —")
    return out
