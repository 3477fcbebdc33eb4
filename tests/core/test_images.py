"""Tests for image decoding (RELIABILITY point 5): refusals, colour modes, EXIF, resizing."""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from core.errors import ImageDecodeError, QuantLensError
from core.inputs.images import IMAGE_EXTENSIONS, decode_image, fit_png, thumbnail_png


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
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # importing core.inputs.images did not relax it


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
# Display PNGs


def png_pixels(data: bytes) -> np.ndarray:
    with Image.open(BytesIO(data)) as im:
        assert im.format == "PNG"
        return np.asarray(im)


def test_fit_png_enlarges_small_images_into_crisp_blocks() -> None:
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (2, 3, 3), dtype=np.uint8)  # 3 wide, 2 high
    shown = png_pixels(fit_png(pixels, 6))  # longer side 3 -> 6: each pixel a 2x2 block
    np.testing.assert_array_equal(shown, pixels.repeat(2, axis=0).repeat(2, axis=1))


def test_fit_png_reduces_large_images_keeping_the_aspect_ratio() -> None:
    pixels = np.full((40, 100, 3), 200, dtype=np.uint8)
    shown = png_pixels(fit_png(pixels, 50))
    assert shown.shape == (20, 50, 3)
    assert (shown == 200).all()  # a flat colour stays that colour under any filter


def test_fit_png_of_one_channel_pixels_is_grayscale() -> None:
    pixels = np.array([[[0], [255]]], dtype=np.uint8)  # (1, 2, 1)
    shown = png_pixels(fit_png(pixels, 4))
    np.testing.assert_array_equal(shown, [[0, 0, 255, 255], [0, 0, 255, 255]])


def test_thumbnail_is_the_decoded_image_fitted(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red; the other three pixels are see-through
    path = save(tmp_path, "a.png", Image.fromarray(rgba))
    shown = png_pixels(thumbnail_png(path, size=4))
    expected = np.full((2, 2, 3), 255, dtype=np.uint8)  # transparency over white
    expected[0, 0] = (255, 0, 0)
    np.testing.assert_array_equal(shown, expected.repeat(2, axis=0).repeat(2, axis=1))
    with pytest.raises(ImageDecodeError, match="file not found"):
        thumbnail_png(tmp_path / "missing.png", size=4)
