"""The equalization rung: the run's Keras model cross-layer equalized (core.engine.equalize),
verified against the original, then quantized as the parent variant is (`int8:eq`).

The same function makes the ladder's candidate and the convert stage's `:eq` variant (a worker
restarted after the ladder chose it converts it again), so both give the same bytes: the
equalization depends only on the model and the calibration images.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.engine.equalize import EqualizationError, EqualizationRecord, Verification
from core.engine.models import ReferenceModel

# The equalized float model must give the original's outputs: max |Δ output| at most this
# fraction of the largest |output| (at least 1). Equalization is exact up to float rounding
# (about 1e-6 relative on the test models); a larger change means an op in between is not
# homogeneous after all, and quantizing it would hide that change inside the int8 error.
RELATIVE_TOLERANCE = 1e-3
MIN_TOP1_AGREEMENT = 0.99  # the equalized float model's top-1 agreement with the original


class EqualizationRefused(EqualizationError):
    """The equalized float model does not give the original's outputs: it is not quantized."""


@dataclass(frozen=True)
class EqualizedReference:
    """The equalized clone served as a reference model, what equalization did, and the clone."""

    reference: ReferenceModel
    record: EqualizationRecord
    keras_model: Any


_lock = threading.Lock()
_last: tuple[tuple[int, str], EqualizedReference] | None = None  # the convert thread reuses it


def equalized_reference(model: ReferenceModel, calibration: np.ndarray) -> EqualizedReference:
    """Equalize the Keras model behind `model` with the calibration images (ReLU6 channels
    equalized only where the clip is not reached on them; biases absorbed where exact).

    Raises:
        EqualizationError: not a Keras model, no pair of layers to equalize (its reason), or
            a model equalization cannot read (one line each).
    """
    from core.engine.equalize import equalize
    from core.engine.models import keras_model_of, reference_from_keras

    global _last
    keras_model = keras_model_of(model)
    if keras_model is None:
        raise EqualizationError(
            f"{model.path.name} is a SavedModel, whose graph has no Keras layers to equalize; "
            "give the .keras file to try equalization"
        )
    key = (id(model), hashlib.sha256(np.ascontiguousarray(calibration).tobytes()).hexdigest())
    with _lock:
        if _last is not None and _last[0] == key:
            return _last[1]
        clone, record = equalize(keras_model, calibration, relu6="if_unclipped")
        if clone is None:
            raise EqualizationError(f"no layers to equalize: {record.reason}")
        found = EqualizedReference(reference_from_keras(clone, model), record, clone)
        _last = (key, found)
        return found


def equalized_sha(model_sha256: str, calibration: np.ndarray) -> str:
    """The content key of the equalized model: the original's hash and the calibration images
    that set its ReLU6 checks and absorbed biases (caches keyed by a model hash then never
    hand back another equalization's bytes)."""
    digest = hashlib.sha256(np.ascontiguousarray(calibration).tobytes()).hexdigest()[:16]
    return f"{model_sha256}:eq:{digest}"


def verify(
    model: ReferenceModel, equalized: EqualizedReference, images: np.ndarray
) -> Verification:
    """The equalized float model against the original on `images`: top-1 agreement and max
    |Δ output|.

    Raises:
        EqualizationRefused: beyond RELATIVE_TOLERANCE or MIN_TOP1_AGREEMENT, with the measured
            difference.
    """
    from core.engine.equalize import verify_equalized
    from core.engine.models import keras_model_of

    original = keras_model_of(model)
    measured = verify_equalized(
        original, equalized.keras_model, images, tolerance=float("inf"), min_agreement=0.0
    )
    scale = max(1.0, float(np.max(np.abs(model.predict(images[:64]))))) if len(images) else 1.0
    tolerance = RELATIVE_TOLERANCE * scale
    if measured.max_abs_delta > tolerance or measured.top1_agreement < MIN_TOP1_AGREEMENT:
        raise EqualizationRefused(
            f"the equalized float model differs from the original on {measured.images} images: "
            f"max |Δ output| {measured.max_abs_delta:.3g} (tolerance {tolerance:.3g}), top-1 "
            f"agreement {measured.top1_agreement:.1%} (needs {MIN_TOP1_AGREEMENT:.0%}); refused"
        )
    return measured


def verified_fix(
    model: ReferenceModel, calibration: np.ndarray, images: np.ndarray
) -> dict[str, Any]:
    """Equalize the Keras model and check the float result against the original on `images`
    (the fix search's selection images) before it is quantized: the rung's typed `fix`, with
    that agreement and max |Δ output|.

    Raises:
        EqualizationError: no pairs (the reason), or the float model changed beyond tolerance.
    """
    equalized = equalized_reference(model, calibration)
    checked = verify(model, equalized, images)
    fix = equalized.record.as_fix()
    fix.pop("float_top1_agreement", None)  # measured on the calibration images; these replace it
    fix.pop("float_max_abs_delta", None)
    return {
        **fix,
        "verified_on": "selection images",
        "verified_images": checked.images,
        "float_top1_agreement_pct": 100.0 * checked.top1_agreement,
        "float_max_abs_delta": checked.max_abs_delta,
    }
