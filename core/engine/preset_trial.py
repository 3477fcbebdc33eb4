"""The original under every preprocessing preset, on a few dozen images (before a run, and for
Setup's inspection); core.metrics.preset_check judges the outcome."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import QuantLensError
from core.metrics.preset_check import check_indices
from core.types import Preset, Sample

if TYPE_CHECKING:
    from core.engine.models import ReferenceModel


def preset_trial(model: ReferenceModel, samples: Sequence[Sample]) -> dict[str, Any]:
    """The original's top-1 class and its probability per image under every preset.

    `samples` are the candidates (their labels already limited to the model's classes); the
    check runs on `CHECK_IMAGES` of them spread over the data set, those that decode.
    Returns the trial mapping core.metrics.preset_check.judge_presets reads.
    """
    from core.engine.runtime import OriginalRunner
    from core.engine.stages.decode import decode_batch
    from core.metrics.agreement import outputs_are_probabilities, to_probabilities, top1

    sig = model.signature
    chosen = [samples[i] for i in check_indices(len(samples))]
    kept, images, _ = decode_batch(
        chosen, height=sig.height, width=sig.width, channels=sig.channels
    )
    trial: dict[str, Any] = {
        "num_classes": sig.num_classes,
        "labels": [-1 if s.label is None else int(s.label) for s in kept],
        "presets": {},
    }
    if not kept:
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
