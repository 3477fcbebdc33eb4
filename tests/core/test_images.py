"""Tests for image decoding (RELIABILITY point 5) and the preprocessing presets."""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from core.errors import ImageDecodeError, QuantLensError
from core.inputs.data import (
    IMAGE_EXTENSIONS,
    PRESETS,
    apply_preset,
    decode_image,
    preset_value_range,
)
from core.types import Preset


def save(
    tmp_path: Path, name: str, image: Image.Image, fmt: str | None = None, **kw: object
) -> Path:
    path = tmp_path / name
    image.save(path, format=fmt, **kw)
    return path


def rgb_image(pixels: list[list[tuple[int, int, int]]]) -> Image.Image:
    return Image.fromarray(np.array(pixels, dtype=np.uint8))


def decode_same_size(path: Path, *, channels: int = 3) -> np.ndarray:
    """Decode at the file's own size, so no resampling blurs the pixel values under test."""
    with Image.open(path) as im:
        width, height = im.size
    return decode_image(path, height=height, width=width, channels=channels)


# ------------------------------------------------------------------------------------------
# Refusals


def test_extensions_cover_the_documented_formats() -> None:
    assert {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"} == IMAGE_EXTENSIONS


def test_truncated_jpeg_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    full = BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full, "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path, height=8, width=8)
    assert str(info.value) == "truncated image file"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # importing core.inputs.data did not relax it


def test_truncated_png_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    full = BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(full.getvalue()[: len(full.getvalue()) // 2])
    with pytest.raises(ImageDecodeError, match=r"^truncated image file$"):
        decode_image(path, height=8, width=8)


def test_text_file_named_jpg_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("these are my notes, not a photo\n")
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path, height=8, width=8)
    assert str(info.value) == "not an image file (format not recognised)"


def test_eps_is_not_handed_to_ghostscript(tmp_path: Path) -> None:
    # Pillow would identify this as EPS and run Ghostscript on load; we refuse the format.
    path = tmp_path / "drawing.jpg"
    path.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(ImageDecodeError, match=r"^not an image file \(format not recognised\)$"):
        decode_image(path, height=8, width=8)


def test_empty_and_missing_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"^empty file$"):
        decode_image(empty, height=8, width=8)
    with pytest.raises(ImageDecodeError, match=r"^file not found$"):
        decode_image(tmp_path / "missing.png", height=8, width=8)


def test_file_size_is_checked_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    with big.open("wb") as f:
        f.truncate(64 * 2**20 + 1)  # sparse: costs no disk, and would be no image anyway
    with pytest.raises(ImageDecodeError) as info:
        decode_image(big, height=8, width=8)
    assert str(info.value) == "file is larger than 64 MB"
    noise = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    small = save(tmp_path, "small.png", Image.fromarray(noise))
    assert small.stat().st_size > 2048
    with pytest.raises(ImageDecodeError, match=r"^file is larger than 2 KB$"):
        decode_image(small, height=8, width=8, max_bytes=2048)
    with pytest.raises(ImageDecodeError, match=r"^file is larger than 100 bytes$"):
        decode_image(small, height=8, width=8, max_bytes=100)
    assert decode_image(small, height=8, width=8, max_bytes=small.stat().st_size).shape == (8, 8, 3)


@pytest.mark.parametrize("warning_action", ["ignore", "error"])
@pytest.mark.parametrize(("side", "pixels"), [(40, 1600), (100, 10_000)])
def test_pixel_bomb_is_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    warning_action: str,
    side: int,
    pixels: int,
) -> None:
    # 1600 pixels is between 1x and 2x the limit (Pillow only warns); 10 000 is above 2x
    # (Pillow raises). Both must be refused, whatever the warning filters say.
    path = save(tmp_path, "bomb.png", Image.new("RGB", (side, side), (9, 9, 9)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter(warning_action, Image.DecompressionBombWarning)
        with pytest.raises(ImageDecodeError) as info:
            decode_image(path, height=8, width=8)
    assert str(info.value) == (
        f"image has {pixels} pixels, above the decompression-bomb limit of 1000"
    )


def test_pixel_limit_is_not_hit_below_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(tmp_path, "ok.png", Image.new("RGB", (25, 40), (9, 9, 9)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert decode_image(path, height=8, width=8).shape == (8, 8, 3)


def test_bad_arguments_are_programming_errors(tmp_path: Path) -> None:
    path = save(tmp_path, "a.png", Image.new("RGB", (4, 4)))
    with pytest.raises(QuantLensError, match=r"models with 4 input channels are not supported"):
        decode_image(path, height=4, width=4, channels=4)
    with pytest.raises(
        QuantLensError, match=r"unknown resize policy 'pad'; choose stretch or crop"
    ):
        decode_image(path, height=4, width=4, resize="pad")


# ------------------------------------------------------------------------------------------
# Modes: content survives


def test_rgb_png_round_trips_exactly(tmp_path: Path) -> None:
    pixels = [[(255, 0, 0), (0, 255, 0), (0, 0, 255)], [(1, 2, 3), (128, 64, 32), (9, 99, 199)]]
    path = save(tmp_path, "rgb.png", rgb_image(pixels))
    out = decode_same_size(path)
    assert out.dtype == np.uint8
    assert out.shape == (2, 3, 3)
    assert out.tolist() == [[list(p) for p in row] for row in pixels]


def test_grayscale_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8))
    assert gray.mode == "L"
    out = decode_same_size(save(tmp_path, "gray.png", gray))
    assert out.shape == (1, 3, 3)
    assert out[0].tolist() == [[0, 0, 0], [77, 77, 77], [255, 255, 255]]
    one = decode_same_size(save(tmp_path, "gray2.png", gray), channels=1)
    assert one.shape == (1, 3, 1)
    assert one[0, :, 0].tolist() == [0, 77, 255]


def test_rgb_to_one_channel_uses_luma(tmp_path: Path) -> None:
    path = save(tmp_path, "rgb.png", rgb_image([[(255, 0, 0), (0, 255, 0), (0, 0, 255)]]))
    out = decode_same_size(path, channels=1)
    # ITU-R 601-2: L = R*299/1000 + G*587/1000 + B*114/1000
    expected = [round(255 * 0.299), round(255 * 0.587), round(255 * 0.114)]
    assert np.abs(out[0, :, 0].astype(int) - expected).max() <= 1


def test_one_bit_image(tmp_path: Path) -> None:
    bilevel = Image.fromarray(np.array([[0, 255, 0]], dtype=np.uint8)).convert("1")
    out = decode_same_size(save(tmp_path, "bw.png", bilevel))
    assert out[0].tolist() == [[0, 0, 0], [255, 255, 255], [0, 0, 0]]


def test_rgba_composites_over_white(tmp_path: Path) -> None:
    rgba = Image.fromarray(
        np.array([[(0, 0, 0, 0), (10, 20, 30, 255), (255, 0, 0, 128)]], dtype=np.uint8)
    )
    out = decode_same_size(save(tmp_path, "rgba.png", rgba))
    half = 128 / 255
    red_over_white = [255, round(255 * (1 - half)), round(255 * (1 - half))]
    assert out[0].tolist() == [[255, 255, 255], [10, 20, 30], red_over_white]


def test_gray_alpha_composites_over_white(tmp_path: Path) -> None:
    la = Image.fromarray(np.array([[(0, 0), (50, 255)]], dtype=np.uint8), mode="LA")
    out = decode_same_size(save(tmp_path, "la.png", la))
    assert out[0].tolist() == [[255, 255, 255], [50, 50, 50]]


def test_palette_image_keeps_its_colours(tmp_path: Path) -> None:
    pal = Image.new("P", (3, 1))
    pal.putpalette([255, 0, 0, 0, 128, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    pal.putdata([0, 1, 2])
    out = decode_same_size(save(tmp_path, "pal.png", pal))
    assert out[0].tolist() == [[255, 0, 0], [0, 128, 0], [0, 0, 255]]


def test_palette_with_transparency_composites_over_white(tmp_path: Path) -> None:
    pal = Image.new("P", (3, 1))
    pal.putpalette([0, 0, 0, 0, 128, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    pal.putdata([0, 1, 2])
    path = save(tmp_path, "pal_t.png", pal, transparency=0)  # index 0 (black) is see-through
    with Image.open(path) as check:
        assert check.mode == "P"
        assert check.info["transparency"] == 0
    out = decode_same_size(path)
    assert out[0].tolist() == [[255, 255, 255], [0, 128, 0], [0, 0, 255]]


def test_palette_gif_with_transparency(tmp_path: Path) -> None:
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * (256 * 3 - 6))
    pal.putdata([0, 1])
    out = decode_same_size(save(tmp_path, "t.gif", pal, transparency=0))
    assert out[0].tolist() == [[255, 255, 255], [200, 10, 10]]


def test_rgb_colour_key_transparency(tmp_path: Path) -> None:
    path = save(
        tmp_path, "key.png", rgb_image([[(1, 2, 3), (200, 100, 50)]]), transparency=(1, 2, 3)
    )
    out = decode_same_size(path)
    assert out[0].tolist() == [[255, 255, 255], [200, 100, 50]]


def test_cmyk_tiff_red_stays_red(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putdata([(0, 255, 255, 0), (0, 0, 0, 255)])  # pure red, pure black
    out = decode_same_size(save(tmp_path, "cmyk.tif", cmyk))
    assert out[0].tolist() == [[255, 0, 0], [0, 0, 0]]


def test_cmyk_jpeg_red_is_red_ish(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))
    path = save(tmp_path, "cmyk.jpg", cmyk, quality=95)
    with Image.open(path) as check:
        assert check.mode == "CMYK"
    out = decode_same_size(path)
    r, g, b = out[8, 8].tolist()
    assert r > 220
    assert g < 40
    assert b < 40


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 100, 32896, 65535]], dtype=np.uint16)
    path = save(tmp_path, "deep.png", Image.fromarray(values))
    with Image.open(path) as check:
        assert check.mode.startswith("I;16")  # really a 16-bit file
    out = decode_same_size(path)
    assert out[0, :, 0].tolist() == [0, 100, 128, 255]
    assert (out[..., 0] == out[..., 1]).all()
    assert (out[..., 0] == out[..., 2]).all()


def test_16bit_big_endian_tiff(tmp_path: Path) -> None:
    values = np.array([[0, 32896, 65535]], dtype=">u2")
    image = Image.frombytes("I;16B", (3, 1), values.tobytes())
    path = save(tmp_path, "deep.tif", image)
    with Image.open(path) as check:
        assert check.mode == "I;16B"
    assert decode_same_size(path)[0, :, 0].tolist() == [0, 128, 255]


def test_32bit_integer_image(tmp_path: Path) -> None:
    in_range = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.int32))
    assert in_range.mode == "I"
    out = decode_same_size(save(tmp_path, "i.tif", in_range))
    assert out[0, :, 0].tolist() == [0, 128, 255]
    # Negative values cannot be 16-bit samples: the range is stretched instead of clipped.
    signed = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32))
    out = decode_same_size(save(tmp_path, "signed.tif", signed))
    assert out[0, :, 0].tolist() == [0, 128, 255]


def test_float_image(tmp_path: Path) -> None:
    unit = Image.fromarray(np.array([[0.0, 0.25, 1.0]], dtype=np.float32))
    assert unit.mode == "F"
    out = decode_same_size(save(tmp_path, "f.tif", unit))
    assert out[0, :, 0].tolist() == [0, round(0.25 * 255), 255]
    wide = Image.fromarray(np.array([[-2.0, 0.0, 2.0]], dtype=np.float32))
    assert decode_same_size(save(tmp_path, "wide.tif", wide))[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize(("fmt", "name"), [("WEBP", "a.webp"), ("BMP", "a.bmp"), ("GIF", "a.gif")])
def test_other_formats_decode(tmp_path: Path, fmt: str, name: str) -> None:
    image = Image.new("RGB", (6, 4), (0, 0, 255))
    kwargs: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
    out = decode_image(save(tmp_path, name, image, fmt, **kwargs), height=4, width=6)
    assert out.shape == (4, 6, 3)
    assert out[2, 3].tolist() == [0, 0, 255]


def test_animated_gif_uses_the_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    assert decode_image(path, height=4, width=4)[0, 0].tolist() == [255, 0, 0]


# ------------------------------------------------------------------------------------------
# EXIF orientation and resizing


def red_blue_with_orientation(tmp_path: Path, orientation: int | None) -> Path:
    """A 2x1 image stored as [red, blue], with an EXIF orientation tag."""
    image = rgb_image([[(255, 0, 0), (0, 0, 255)]])
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    return save(tmp_path, f"o{orientation}.png", image, exif=exif.tobytes())


def test_exif_orientation_6_rotates_clockwise(tmp_path: Path) -> None:
    # Orientation 6: the stored first row is the displayed right column, top to bottom.
    out = decode_image(red_blue_with_orientation(tmp_path, 6), height=2, width=1)
    assert out[:, 0].tolist() == [[255, 0, 0], [0, 0, 255]]


def test_exif_orientation_8_rotates_counter_clockwise(tmp_path: Path) -> None:
    out = decode_image(red_blue_with_orientation(tmp_path, 8), height=2, width=1)
    assert out[:, 0].tolist() == [[0, 0, 255], [255, 0, 0]]


def test_no_orientation_keeps_the_stored_layout(tmp_path: Path) -> None:
    out = decode_image(red_blue_with_orientation(tmp_path, None), height=1, width=2)
    assert out[0].tolist() == [[255, 0, 0], [0, 0, 255]]


def test_exif_orientation_in_jpeg(tmp_path: Path) -> None:
    # Left half red, right half blue, 16x8, stored with orientation 6 -> displayed 8x16.
    array = np.zeros((8, 16, 3), dtype=np.uint8)
    array[:, :8] = (255, 0, 0)
    array[:, 8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = save(tmp_path, "o.jpg", Image.fromarray(array), exif=exif.tobytes(), quality=95)
    out = decode_image(path, height=16, width=8)
    top, bottom = out[2, 4].tolist(), out[13, 4].tolist()
    assert top[0] > 200 and top[2] < 60  # red on top
    assert bottom[2] > 200 and bottom[0] < 60  # blue below


def three_stripes(tmp_path: Path) -> Path:
    """8 wide, 4 high: 2 red columns, 4 green, 2 blue."""
    array = np.zeros((4, 8, 3), dtype=np.uint8)
    array[:, :2] = (255, 0, 0)
    array[:, 2:6] = (0, 255, 0)
    array[:, 6:] = (0, 0, 255)
    return save(tmp_path, "stripes.png", Image.fromarray(array))


def test_crop_keeps_the_centre_at_the_target_aspect_ratio(tmp_path: Path) -> None:
    out = decode_image(three_stripes(tmp_path), height=2, width=2, resize="crop")
    assert out.shape == (2, 2, 3)
    assert (out == np.array([0, 255, 0], dtype=np.uint8)).all()


def test_stretch_keeps_the_whole_image(tmp_path: Path) -> None:
    out = decode_image(three_stripes(tmp_path), height=2, width=4, resize="stretch")
    assert out.shape == (2, 4, 3)
    assert out[0, 0, 0] > 200  # red is still at the left edge
    assert out[0, 3, 2] > 200  # blue at the right edge
    # Compare with Pillow's own bilinear resize: "stretch" is exactly that.
    with Image.open(three_stripes(tmp_path)) as im:
        expected = np.asarray(im.convert("RGB").resize((4, 2), Image.Resampling.BILINEAR))
    assert (out == expected).all()


def test_crop_of_a_tall_image(tmp_path: Path) -> None:
    array = np.zeros((8, 4, 3), dtype=np.uint8)
    array[:2] = (255, 0, 0)
    array[2:6] = (0, 255, 0)
    array[6:] = (0, 0, 255)
    path = save(tmp_path, "tall.png", Image.fromarray(array))
    out = decode_image(path, height=3, width=3, resize="crop")
    assert (out == np.array([0, 255, 0], dtype=np.uint8)).all()


def test_output_is_a_writable_copy(tmp_path: Path) -> None:
    path = save(tmp_path, "a.png", Image.new("RGB", (4, 4), (1, 2, 3)))
    out = decode_image(path, height=4, width=4)
    out[0, 0] = 0  # must not raise: callers stack and normalise in place
    assert out.flags.c_contiguous


# ------------------------------------------------------------------------------------------
# Presets


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
