"""The gallery, the sample dialog and report.html show the pixels the model was fed: their
thumbnails are the model decoder's output, only enlarged (nearest-neighbour, whole blocks)."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.inputs.images import decode_image
from core.reporting.html import thumbnail_data_uri
from ui import cache

SIDE = 16  # 112 / 16 = 7 and 320 / 16 = 20: thumbnails are whole-pixel enlargements


def _png_16bit(path: Path) -> None:
    # A ramp that does not reach 65535: scaling by the image's own maximum would brighten it.
    ramp = np.linspace(1000, 40000, SIDE * SIDE).reshape(SIDE, SIDE).astype(np.uint16)
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")


def _palette_transparent(path: Path) -> None:
    im = Image.new("P", (SIDE, SIDE), 1)
    im.putpalette([0, 0, 0, 200, 30, 30, 10, 90, 250] + [0] * 759)
    for x in range(SIDE):
        im.putpixel((x, x), 0)  # index 0 is transparent: a white diagonal after compositing
        im.putpixel((x, SIDE - 1 - x), 2)
    im.save(path, transparency=0)


def _rgba_half_alpha(path: Path) -> None:
    rng = np.random.default_rng(3)
    px = rng.integers(0, 256, (SIDE, SIDE, 4), dtype=np.uint8)
    px[..., 3] = np.linspace(0, 255, SIDE, dtype=np.uint8)[None, :]
    Image.fromarray(px, mode="RGBA").save(path)


def _cmyk_jpeg(path: Path) -> None:
    rng = np.random.default_rng(4)
    px = rng.integers(0, 256, (SIDE, SIDE, 4), dtype=np.uint8)
    Image.fromarray(px, mode="CMYK").save(path, quality=95)


def _exif_rotated(path: Path) -> None:
    px = np.zeros((SIDE // 2, SIDE, 3), dtype=np.uint8)  # stored 16 wide, 8 high
    px[:, : SIDE // 4] = (250, 20, 20)
    px[0, :] = (20, 250, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    Image.fromarray(px).save(path, exif=exif)


CASES: dict[str, tuple[str, Callable[[Path], None]]] = {
    "16-bit": ("g16.png", _png_16bit),
    "palette+transparency": ("pal.png", _palette_transparent),
    "rgba": ("rgba.png", _rgba_half_alpha),
    "cmyk": ("cmyk.jpg", _cmyk_jpeg),
    "exif-rotated": ("rot.jpg", _exif_rotated),
}


def _model_pixels(path: Path) -> np.ndarray:
    """What the run feeds the model, asked at the image's own displayed size (no resampling)."""
    with Image.open(path) as im:
        w, h = im.size
        if (im.getexif() or {}).get(0x0112) in (5, 6, 7, 8):
            w, h = h, w
    return decode_image(path, height=h, width=w, channels=3)


def _blocks(png: bytes, model: np.ndarray) -> np.ndarray:
    """The thumbnail sampled once per model pixel (it must be an exact integer enlargement)."""
    thumb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    h, w = model.shape[:2]
    assert thumb.shape[0] % h == 0 and thumb.shape[1] % w == 0, (thumb.shape, model.shape)
    fy, fx = thumb.shape[0] // h, thumb.shape[1] // w
    assert fy == fx > 1
    blocks = thumb.reshape(h, fy, w, fx, 3)
    # Every block is one flat colour: nothing was smoothed in or out.
    assert (blocks == blocks[:, :1, :, :1, :]).all()
    return blocks[:, 0, :, 0, :]


@pytest.mark.parametrize("case", list(CASES))
def test_gallery_thumbnail_is_the_model_input(tmp_path: Path, case: str) -> None:
    name, make = CASES[case]
    path = tmp_path / name
    make(path)
    model = _model_pixels(path)
    for size in (cache.THUMB_PX, cache.LARGE_PX):
        png = cache.thumbnail(path, size=size)
        assert png is not None
        np.testing.assert_array_equal(_blocks(png, model), model)


@pytest.mark.parametrize("case", list(CASES))
def test_report_html_thumbnail_is_the_model_input(tmp_path: Path, case: str) -> None:
    name, make = CASES[case]
    path = tmp_path / name
    make(path)
    model = _model_pixels(path)
    uri = thumbnail_data_uri(path, size=SIDE * 6)
    png = base64.b64decode(uri.split(",", 1)[1])
    np.testing.assert_array_equal(_blocks(png, model), model)


def test_decoder_values_are_right_where_views_used_to_differ(tmp_path: Path) -> None:
    """Anchor the shared decoder itself on values computed by hand."""
    g16 = tmp_path / "g16.png"
    Image.fromarray(np.full((4, 4), 30000, np.uint16)).save(g16)
    # 16-bit full scale is 65535: 30000 / 257 = 116.7 -> 117, not 255 (own-maximum scaling).
    assert decode_image(g16, height=4, width=4)[0, 0].tolist() == [117, 117, 117]
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 64)).save(rgba)
    # Black at alpha 64/255 over white: 255 * (1 - 64/255) = 191.
    assert decode_image(rgba, height=4, width=4)[0, 0].tolist() == [191, 191, 191]


def test_grayscale_model_gallery_shows_luma(tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    Image.new("RGB", (SIDE, SIDE), (200, 0, 0)).save(path)
    png = cache.thumbnail(path, size=cache.THUMB_PX, channels=1)
    assert png is not None
    # ITU-R 601-2 luma of pure red 200: 200 * 299 / 1000 = 59.8 -> 60 (Pillow rounds).
    assert np.unique(np.asarray(Image.open(io.BytesIO(png)))).tolist() == [60]
