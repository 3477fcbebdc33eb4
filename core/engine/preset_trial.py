"""The original under every preprocessing preset, on a few dozen images (before a run, and for
Setup's inspection); core.metrics.preset_check judges the outcome."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import QuantLensError
from core.metrics.preset_check import FIRST_LOOK_IMAGES, check_indices
from core.types import Preset, Sample

if TYPE_CHECKING:
    from core.engine.models import ReferenceModel


def preset_trial(
    model: ReferenceModel, samples: Sequence[Sample], *, used: str | None = None
) -> dict[str, Any]:
    """The original's top-1 class and its probability per image under every preset.

    `samples` are the candidates (their labels already limited to the model's classes); the
    check runs on `CHECK_IMAGES` of them spread over the data set, those that decode. With
    `used` (the run's preset) it looks at every other one of them first and runs the rest only
    when another preset is ahead enough there to be judged clearly better on all
    (core.metrics.preset_check.needs_all_images): a run whose preset is right pays for half.
    Returns the trial mapping core.metrics.preset_check.judge_presets reads.
    """
    from core.engine.stages.decode import decode_batch
    from core.metrics.preset_check import needs_all_images

    sig = model.signature
    chosen = [samples[i] for i in check_indices(len(samples))]
    kept, images, _ = decode_batch(
        chosen, height=sig.height, width=sig.width, channels=sig.channels
    )
    labels = [-1 if s.label is None else int(s.label) for s in kept]
    if used is None or len(kept) <= FIRST_LOOK_IMAGES:
        return _trial(model, labels, images)
    first = _trial(model, labels[::2], images[::2])
    if not needs_all_images(first, used):
        return first
    rest = _trial(model, labels[1::2], images[1::2])
    return _joined(first, rest)


def _trial(
    model: ReferenceModel, labels: list[int], images: Sequence[np.ndarray]
) -> dict[str, Any]:
    from core.engine.runtime import OriginalRunner
    from core.metrics.agreement import outputs_are_probabilities, to_probabilities, top1

    trial: dict[str, Any] = {
        "num_classes": model.signature.num_classes,
        "labels": labels,
        "presets": {},
    }
    if not len(images):
        return trial
    pixels = np.stack(images)
    for preset in Preset:
        try:
            raw = OriginalRunner(model, preset=preset).infer(pixels)
        except QuantLensError as exc:  # e.g. caffe on a 2-channel model
            trial["presets"][preset.value] = {"error": str(exc)}
            continue
        probs = to_probabilities(raw, softmax=not outputs_are_probabilities(raw))
        best = top1(probs)
        confidence = np.take_along_axis(probs, np.maximum(best, 0)[:, None], axis=1)[:, 0]
        trial["presets"][preset.value] = {
            "top1": best.tolist(),
            "confidence": [float(c) if np.isfinite(c) else None for c in confidence],
        }
    return trial


def _joined(first: dict[str, Any], rest: dict[str, Any]) -> dict[str, Any]:
    """One trial from two on different images (the pairs per image stay paired)."""
    presets: dict[str, Any] = {}
    for name, entry in first["presets"].items():
        other = rest["presets"].get(name) or {}
        if entry.get("error") or other.get("error"):
            presets[name] = {"error": entry.get("error") or other["error"]}
        else:
            presets[name] = {key: entry[key] + other[key] for key in ("top1", "confidence")}
    return {**first, "labels": first["labels"] + rest["labels"], "presets": presets}
