"""The flip hunt's perturbations on crafted pixels (no model): each one worked out by hand."""

from __future__ import annotations

import numpy as np

from core.inputs.perturb import PERTURBATIONS, brightness, crop, jpeg, noise


def test_brightness_scales_rounds_and_clips() -> None:
    pixels = np.array([[[[0, 100, 250]]]], dtype=np.uint8)
    rng = np.random.default_rng(0)
    # 100 x 1.1 = 110; 250 x 1.1 = 275 clips to 255; 100 x 0.9 = 90; 250 x 0.9 = 225.
    assert brightness(1.1)(pixels, rng).tolist() == [[[[0, 110, 255]]]]
    assert brightness(0.9)(pixels, rng).tolist() == [[[[0, 90, 225]]]]


def test_noise_has_sigma_two_steps_and_repeats_with_its_seed() -> None:
    pixels = np.full((4, 32, 32, 3), 128, dtype=np.uint8)
    first = noise(pixels, np.random.default_rng(7))
    assert np.array_equal(first, noise(pixels, np.random.default_rng(7)))
    spread = float((first.astype(np.float64) - 128).std())
    assert 1.8 < spread < 2.2  # σ = 2 in uint8 steps (2/255 of [0, 1]), rounded


def test_crop_keeps_the_centre_92_percent() -> None:
    # A 50x50 image whose outer 2-pixel border is white: 92 % of 50 is 46, offset 2, so the
    # crop is exactly the black centre and stays black after resizing back.
    pixels = np.full((1, 50, 50, 1), 255, dtype=np.uint8)
    pixels[:, 2:48, 2:48] = 0
    out = crop(pixels, np.random.default_rng(0))
    assert out.shape == pixels.shape
    assert int(out.max()) == 0


def test_jpeg_keeps_shape_and_changes_a_noisy_image() -> None:
    pixels = np.random.default_rng(1).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    out = jpeg(pixels, np.random.default_rng(0))
    assert out.shape == pixels.shape and out.dtype == np.uint8
    assert not np.array_equal(out, pixels)


def test_five_perturbations_named_as_the_pages_show_them() -> None:
    assert [p.name for p in PERTURBATIONS] == [
        "brightness +10 %",
        "brightness -10 %",
        "JPEG quality 75",
        "crop 92 %",
        "noise σ=2/255",
    ]
