"""Preprocessing presets: how decoded uint8 pixels become the model's float32 input."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np

from core.errors import QuantLensError
from core.types import Preset

_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

PRESETS: Mapping[Preset, str] = MappingProxyType(
    {
        Preset.MOBILENET_V2: (
            "x / 127.5 - 1, range [-1, 1]: MobileNet V1/V2, ResNet V2, Inception, Xception"
        ),
        Preset.UNIT: "x / 255, range [0, 1]: models trained after a Rescaling(1/255) step",
        Preset.RAW: (
            "x as float, range [0, 255]: models that normalise inside (EfficientNet, ConvNeXt, "
            "MobileNetV3 in Keras)"
        ),
        Preset.CAFFE: (
            "RGB to BGR, minus the ImageNet mean [103.939, 116.779, 123.68]: VGG16/19, ResNet50"
        ),
        Preset.TORCH: (
            "x / 255, minus mean [0.485, 0.456, 0.406], over std [0.229, 0.224, 0.225]: "
            "DenseNet, models ported from PyTorch"
        ),
    }
)


def apply_preset(batch: np.ndarray, preset: Preset | str) -> np.ndarray:
    """Turn decoded uint8 RGB pixels into the model's float32 input.

    Args:
        batch: uint8 pixels, (N, H, W, C) or (H, W, C), RGB order, C = 3 or 1.
        preset: the preset; for 1 channel, caffe and torch use the mean of their
            per-channel means (and stds).

    Returns:
        A new float32 array of the same shape.

    Raises:
        QuantLensError: unknown preset, or caffe/torch on neither 1 nor 3 channels.
    """
    try:
        preset = Preset(preset)
    except ValueError:
        choices = ", ".join(p.value for p in Preset)
        raise QuantLensError(f"unknown preset {preset!r}; choose from {choices}") from None
    x = np.asarray(batch).astype(np.float32)
    if preset is Preset.RAW:
        return x
    if preset is Preset.UNIT:
        return x / np.float32(255.0)
    if preset is Preset.MOBILENET_V2:
        x /= np.float32(127.5)
        x -= np.float32(1.0)
        return x
    channels = x.shape[-1] if x.ndim else 0
    if channels not in (1, 3):
        raise QuantLensError(
            f"preset {preset} needs 3 (RGB) or 1 channel images, got {channels}; pick another"
        )
    out: np.ndarray
    if preset is Preset.CAFFE:
        if channels == 3:
            out = x[..., ::-1] - _CAFFE_MEAN_BGR
        else:
            out = x - _CAFFE_MEAN_BGR.mean(dtype=np.float32)
        return out
    # TORCH
    x /= np.float32(255.0)
    if channels == 3:
        out = (x - _TORCH_MEAN) / _TORCH_STD
    else:
        out = (x - _TORCH_MEAN.mean(dtype=np.float32)) / _TORCH_STD.mean(dtype=np.float32)
    return out


def preset_value_range(preset: Preset | str) -> tuple[float, float]:
    """The theoretical (min, max) of `apply_preset` output for 3-channel images.

    Computed by applying the preset to black and white pixels, so it matches the float32
    arithmetic of `apply_preset` exactly (each preset is increasing in every channel).
    """
    extremes = np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8)
    out = apply_preset(extremes, preset)
    return float(out.min()), float(out.max())
