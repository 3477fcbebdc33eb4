"""Small perturbations of decoded images for the flip hunt: brightness ±10 %, JPEG quality 75,
a 92 % centre crop and Gaussian noise of σ = 2/255, each applied to the uint8 pixels the models
are fed (before preprocessing), seeded so a run repeats exactly."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

JPEG_QUALITY = 75
CROP_FRACTION = 0.92
NOISE_SIGMA = 2.0  # in uint8 steps: 2/255 of the [0, 1] range


def _to_uint8(values: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return out


def _image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)


def _array(image: Image.Image, channels: int) -> np.ndarray:
    out = np.asarray(image, dtype=np.uint8)
    return out[..., None] if channels == 1 else out


def brightness(factor: float) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    def apply(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return _to_uint8(pixels.astype(np.float64) * factor)

    return apply


def jpeg(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image through a JPEG encoder at quality 75 and back."""
    out = np.empty_like(pixels)
    for i, one in enumerate(pixels):
        buffer = io.BytesIO()
        _image(one).save(buffer, format="JPEG", quality=JPEG_QUALITY)
        buffer.seek(0)
        out[i] = _array(Image.open(buffer), pixels.shape[-1])
    return out


def crop(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The centre 92 % of each side, resized back to the model's input size (bilinear)."""
    _, height, width, channels = pixels.shape
    h, w = max(1, round(height * CROP_FRACTION)), max(1, round(width * CROP_FRACTION))
    top, left = (height - h) // 2, (width - w) // 2
    out = np.empty_like(pixels)
    for i, one in enumerate(pixels):
        part = _image(one[top : top + h, left : left + w])
        out[i] = _array(part.resize((width, height), Image.Resampling.BILINEAR), channels)
    return out


def noise(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(pixels.astype(np.float64) + rng.normal(0.0, NOISE_SIGMA, pixels.shape))


@dataclass(frozen=True)
class Perturbation:
    name: str
    apply: Callable[[np.ndarray, np.random.Generator], np.ndarray]


PERTURBATIONS = (
    Perturbation("brightness +10 %", brightness(1.1)),
    Perturbation("brightness -10 %", brightness(0.9)),
    Perturbation(f"JPEG quality {JPEG_QUALITY}", jpeg),
    Perturbation(f"crop {CROP_FRACTION * 100:.0f} %", crop),
    Perturbation("noise σ=2/255", noise),
)
