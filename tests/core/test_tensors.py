"""Quantize / dequantize through a tensor's own (scale, zero point), checked by hand."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from core.engine.tensors import dequantize, quantize
from core.errors import InvalidTFLiteModel


def test_dequantize_maps_uint8_extremes_to_unit_range() -> None:
    np.testing.assert_allclose(
        dequantize(np.array([0, 255], dtype=np.uint8), 1 / 255, 0),
        [0.0, 1.0],
        atol=1e-7,
    )


def test_dequantize_does_not_wrap_uint8() -> None:
    q = np.array([0, 128, 255], dtype=np.uint8)
    # uint8 arithmetic would give (0 - 128) % 256 = 128, i.e. +64 instead of -64.
    np.testing.assert_array_equal(dequantize(q, 0.5, 128), np.array([-64.0, 0.0, 63.5]))
    q8 = np.array([-128, 0, 127], dtype=np.int8)
    np.testing.assert_array_equal(dequantize(q8, 0.25, -10), np.array([-29.5, 2.5, 34.25]))


def test_int8_quantize_round_trip_within_half_a_step() -> None:
    scale, zp = 2 / 255, -1
    x = np.linspace(-0.99, 0.99, 199).astype(np.float32)
    q = quantize(x, scale, zp, np.int8)
    assert q.dtype == np.int8
    back = dequantize(q, scale, zp)
    assert np.max(np.abs(back - x)) <= scale / 2 + 1e-6
    # Saturation at the type's limits instead of wrapping.
    assert quantize(np.array([5.0, -5.0]), scale, zp, np.int8).tolist() == [127, -128]
    assert quantize(np.array([2.0, -2.0]), 1 / 255, 0, np.uint8).tolist() == [255, 0]


def test_quantize_rounds_half_away_from_zero_like_tflite() -> None:
    q = quantize(np.array([2.5, -2.5, 0.5, -0.5, 1.4]), 1.0, 3, np.int8)
    assert q.tolist() == [
        6,
        0,
        4,
        2,
        4,
    ]  # round(x) + 3 with round(2.5)=3, round(-2.5)=-3


@pytest.mark.parametrize("scale", [0.0, math.nan, math.inf])
def test_zero_scale_raises_with_message(scale: float) -> None:
    message = "input tensor has a zero quantization scale; the model is broken, re-convert it"
    with pytest.raises(InvalidTFLiteModel, match=re.escape(message)):
        quantize(np.array([0.5]), scale, 0, np.int8)
    with pytest.raises(InvalidTFLiteModel, match="output tensor has a zero quantization scale"):
        dequantize(np.array([1], dtype=np.int8), scale, 0)


def test_quantize_refuses_float_dtype() -> None:
    with pytest.raises(ValueError, match="integer dtype"):
        quantize(np.array([0.5]), 0.1, 0, np.float32)
