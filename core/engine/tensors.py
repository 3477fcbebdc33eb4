"""Quantized tensors: float values in and out through a tensor's own (scale, zero point)."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from core.errors import InvalidTFLiteModel


def _check_scale(scale: float, which: str) -> float:
    s = float(scale)
    if s == 0.0 or not math.isfinite(s):
        raise InvalidTFLiteModel(
            f"{which} tensor has a zero quantization scale; the model is broken, re-convert it"
        )
    return s


def dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """Float32 values of a quantized tensor: (q - zero_point) * scale.

    The subtraction is done in int32 so uint8/int8 values cannot wrap around.

    Raises:
        InvalidTFLiteModel: if scale is zero or not finite.
    """
    s = _check_scale(scale, "output")
    wide = np.asarray(q).astype(np.int32) - np.int32(zero_point)
    return np.asarray(wide.astype(np.float64) * s, dtype=np.float32)


def dequantize_per_channel(
    q: np.ndarray, scales: npt.ArrayLike, zero_points: npt.ArrayLike, axis: int
) -> np.ndarray:
    """Float32 values of a tensor quantized per channel along `axis` (a TFLite kernel's
    quantizedDimension): (q - zero_point[c]) * scale[c]; one scale or zero point may serve all."""
    scale = np.asarray(scales, dtype=np.float64)
    zero = np.asarray(zero_points, dtype=np.int64)
    if scale.size > 1:
        view = [1] * np.ndim(q)
        view[axis] = scale.size
        scale = scale.reshape(view)
        zero = zero.reshape(view) if zero.size > 1 else zero
    return np.asarray((np.asarray(q).astype(np.int64) - zero) * scale, dtype=np.float32)


def quantize(x: np.ndarray, scale: float, zero_point: int, dtype: npt.DTypeLike) -> np.ndarray:
    """Quantize float values for an integer input tensor: clip(round(x / scale) + zp).

    Rounds half away from zero before adding the zero point, as TFLite's own Quantize kernel
    does (std::round), so our inputs match what the converter's calibration assumed.

    Raises:
        InvalidTFLiteModel: if scale is zero or not finite.
        ValueError: if dtype is not an integer type.
    """
    s = _check_scale(scale, "input")
    target = np.dtype(dtype)
    if target.kind not in "iu":
        raise ValueError(f"quantize needs an integer dtype, got {target}")
    info = np.iinfo(target)
    scaled = np.asarray(x, dtype=np.float64) / s
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
    return np.asarray(np.clip(rounded + int(zero_point), info.min, info.max).astype(target))
