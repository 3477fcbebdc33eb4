"""Tests for the preprocessing presets: exact values per preset, computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import QuantLensError
from core.inputs.presets import PRESETS, apply_preset, preset_value_range
from core.types import Preset


def pixel_batch() -> np.ndarray:
    """One (1, 1, 3, 3) batch: pixels 0, 128 and 255 with distinct channels for the BGR flip."""
    return np.array([[[[0, 0, 0], [128, 128, 128], [255, 255, 255]]]], dtype=np.uint8)


def test_every_preset_is_described() -> None:
    assert set(PRESETS) == set(Preset)
    assert all(isinstance(text, str) and text for text in PRESETS.values())


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        (Preset.MOBILENET_V2, [-1.0, 128 / 127.5 - 1.0, 1.0]),
        (Preset.UNIT, [0.0, 128 / 255, 1.0]),
        (Preset.RAW, [0.0, 128.0, 255.0]),
    ],
)
def test_scaling_presets_exact_values(preset: Preset, expected: list[float]) -> None:
    out = apply_preset(pixel_batch(), preset)
    assert out.dtype == np.float32
    assert out.shape == (1, 1, 3, 3)
    for i, value in enumerate(expected):
        np.testing.assert_allclose(out[0, 0, i], [value] * 3, rtol=1e-6, atol=1e-6)


def test_caffe_flips_to_bgr_and_subtracts_the_bgr_mean() -> None:
    pixel = np.array([[[0, 128, 255]]], dtype=np.uint8)  # R=0, G=128, B=255
    out = apply_preset(pixel, Preset.CAFFE)
    assert out.shape == (1, 1, 3)
    # BGR order: B=255 - 103.939, G=128 - 116.779, R=0 - 123.68
    np.testing.assert_allclose(out[0, 0], [151.061, 11.221, -123.68], rtol=0, atol=1e-4)
    batch = apply_preset(pixel_batch(), "caffe")
    np.testing.assert_allclose(batch[0, 0, 0], [-103.939, -116.779, -123.68], atol=1e-4)
    np.testing.assert_allclose(
        batch[0, 0, 2], [255 - 103.939, 255 - 116.779, 255 - 123.68], atol=1e-4
    )


def test_torch_normalises_with_imagenet_mean_and_std() -> None:
    pixel = np.array([[[0, 128, 255]]], dtype=np.uint8)
    out = apply_preset(pixel, Preset.TORCH)
    expected = [(0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-5)


def test_one_channel_caffe_and_torch_use_mean_statistics() -> None:
    gray = np.array([[[0], [128], [255]]], dtype=np.uint8)
    caffe_mean = (103.939 + 116.779 + 123.68) / 3
    np.testing.assert_allclose(
        apply_preset(gray, Preset.CAFFE)[0, :, 0],
        [-caffe_mean, 128 - caffe_mean, 255 - caffe_mean],
        atol=1e-4,
    )
    mean, std = (0.485 + 0.456 + 0.406) / 3, (0.229 + 0.224 + 0.225) / 3
    np.testing.assert_allclose(
        apply_preset(gray, Preset.TORCH)[0, :, 0],
        [(0 - mean) / std, (128 / 255 - mean) / std, (1 - mean) / std],
        rtol=1e-5,
    )


def test_apply_preset_does_not_touch_its_input() -> None:
    batch = pixel_batch()
    before = batch.copy()
    for preset in Preset:
        apply_preset(batch, preset)
    assert (batch == before).all()


def test_unknown_preset_and_bad_channels() -> None:
    with pytest.raises(
        QuantLensError, match=r"unknown preset 'imagenet'; choose from mobilenet_v2"
    ):
        apply_preset(pixel_batch(), "imagenet")
    with pytest.raises(QuantLensError, match=r"preset caffe needs 3 .* or 1 channel images, got 4"):
        apply_preset(np.zeros((1, 2, 2, 4), dtype=np.uint8), Preset.CAFFE)


@pytest.mark.parametrize(
    ("preset", "lo", "hi"),
    [
        (Preset.MOBILENET_V2, -1.0, 1.0),
        (Preset.UNIT, 0.0, 1.0),
        (Preset.RAW, 0.0, 255.0),
        (Preset.CAFFE, -123.68, 255 - 103.939),
        (Preset.TORCH, -0.485 / 0.229, (1 - 0.406) / 0.225),
    ],
)
def test_preset_value_range(preset: Preset, lo: float, hi: float) -> None:
    got_lo, got_hi = preset_value_range(preset)
    assert got_lo == pytest.approx(lo, abs=1e-4)
    assert got_hi == pytest.approx(hi, abs=1e-4)
    rng = np.random.default_rng(0)
    out = apply_preset(rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8), preset)
    assert got_lo <= out.min()
    assert out.max() <= got_hi
