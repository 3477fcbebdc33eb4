"""Make a variant's `.tflite` with the backend it names: the TFLiteConverter or LiteRT Quantizer.

The quantizer starts from the converter's float32 model, so it builds on core.engine.convert;
choosing between them happens here, above both, which keeps the two modules free of a cycle.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from core.engine.convert import ConversionResult, tflite_from_converter
from core.engine.fixes.keep_float import tflite_keeping_float
from core.engine.models import ReferenceModel
from core.engine.quantizer import tflite_from_quantizer
from core.types import Backend, Mode, VariantSpec

if TYPE_CHECKING:
    from core.engine.fixes.bias_correct import BiasCorrection


def tflite_from_reference(
    model: ReferenceModel,
    spec: VariantSpec,
    *,
    model_sha256: str,
    calibration: np.ndarray | None = None,
    preset: str | None = None,
    probe: np.ndarray | None = None,
    cache_dir: Path | None = None,
    float32: ConversionResult | None = None,
) -> ConversionResult:
    """Convert the reference model for one variant on its backend, or return the cached bytes.

    The arguments are those of core.engine.convert.tflite_from_converter, which documents them;
    `float32` is the run's own float32 conversion of the model, which a quantizer recipe starts
    from (core.engine.quantizer.tflite_from_quantizer); ignored for an equalized or bias-corrected
    variant, whose model differs.

    An equalized variant (`int8:eq`) converts the run's Keras model after cross-layer
    equalization on the calibration images (core.engine.fixes.equalize_rung); a bias-corrected
    one (`int8:bc=A`) after empirical bias correction (core.engine.fixes.bias_correct).

    Raises:
        ConversionFailed: the backend refused the model or the calibration data, or every
            conversion route gives NaN/Inf outputs; or equalization cannot run on this model.
    """
    if spec.equalized:
        from core.engine.equalize import EqualizationError
        from core.engine.fixes.equalize_rung import equalized_reference, equalized_sha
        from core.errors import ConversionFailed

        if calibration is None:
            raise ConversionFailed(f"{spec.name}: equalization needs the calibration images")
        try:
            model = equalized_reference(model, calibration).reference
        except EqualizationError as exc:
            raise ConversionFailed(f"{spec.name}: {exc}") from None
        model_sha256 = equalized_sha(model_sha256, calibration)  # the edited weights' key
        float32 = None  # the pivot converted the original, not the equalized model
    if spec.bias_corrected_layers:
        model, model_sha256 = _bias_corrected(model, spec, model_sha256, calibration, preset)
        float32 = None  # nor the bias-corrected one
    if spec.backend is Backend.QUANTIZER:
        return tflite_from_quantizer(
            model,
            spec,
            model_sha256=model_sha256,
            calibration=calibration,
            preset=preset,
            probe=probe,
            cache_dir=cache_dir,
            float32=float32,
        )
    return tflite_from_converter(
        model,
        spec,
        model_sha256=model_sha256,
        calibration=calibration,
        preset=preset,
        probe=probe,
        cache_dir=cache_dir,
        keep_float=tflite_keeping_float,
    )


def bias_correction(
    model: ReferenceModel,
    spec: VariantSpec,
    *,
    model_sha256: str,
    calibration: np.ndarray,
    preset: str | None = None,
) -> BiasCorrection:
    """The bias-corrected model of a `:bc=` variant (core.engine.fixes.bias_correct), its
    error measured on the parent's conversion on this backend.

    Raises:
        BiasCorrectionError: the model or its named layers cannot be corrected (the reason).
        ConversionFailed: a step's conversion failed.
    """
    from dataclasses import replace

    from core.engine.fixes.bias_correct import bias_corrected_reference

    def convert(reference: ReferenceModel, target: VariantSpec, sha: str) -> bytes:
        return tflite_from_reference(
            reference,
            replace(target, bias_corrected_layers=()),
            model_sha256=sha,
            calibration=None if target.mode is Mode.FLOAT32 else calibration,
            preset=preset,
        ).tflite

    return bias_corrected_reference(
        model, spec, calibration, model_sha256=model_sha256, convert=convert
    )


def _bias_corrected(
    model: ReferenceModel,
    spec: VariantSpec,
    model_sha256: str,
    calibration: np.ndarray | None,
    preset: str | None,
) -> tuple[ReferenceModel, str]:
    """The bias-corrected reference model of a `:bc=` variant and its cache key.

    Raises:
        ConversionFailed: no calibration images, or the model cannot be corrected (the reason).
    """
    from core.engine.fixes.bias_correct import BiasCorrectionError, corrected_sha
    from core.errors import ConversionFailed

    if calibration is None:
        raise ConversionFailed(f"{spec.name}: bias correction needs the calibration images")
    try:
        corrected = bias_correction(
            model, spec, model_sha256=model_sha256, calibration=calibration, preset=preset
        )
    except BiasCorrectionError as exc:
        raise ConversionFailed(f"{spec.name}: {exc}") from None
    return corrected.reference, corrected_sha(model_sha256, spec, calibration)
