"""Image files: the one decoder (`decode_pixels`), the model's resize, and display PNGs."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import ImageDecodeError, QuantLensError

# File names enumerated as images (data sets list these; decoding then checks the content).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)

# Pillow formats we decode. Restricting the list keeps untrusted files away from parsers we do
# not need (EPS, for one, hands the file to Ghostscript). Multi-picture phone JPEGs (MPO) open
# through the JPEG plugin.
DECODE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
RESIZE_POLICIES: tuple[str, ...] = ("stretch", "crop")

# Also a data set's skip reason for a listed file that is missing: one wording for both.
NOT_FOUND = "file not found"


def _composite_over_white(im: Image.Image) -> Image.Image:
    """Flatten transparency onto white, so both models see what a viewer sees."""
    rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
    alpha = rgba[..., 3:] / 255.0
    rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return Image.fromarray(np.rint(rgb).astype(np.uint8))


def _scale_to_uint8(values: np.ndarray, *, full_scale: float | None) -> Image.Image:
    """Map a high-range grayscale array to 8 bits without clipping its content away."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if full_scale is not None:
        out = values * (255.0 / full_scale)
    else:
        lo, hi = float(values.min()), float(values.max())
        out = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def _to_rgb_or_l(im: Image.Image) -> Image.Image:
    """Bring any Pillow mode to 8-bit "RGB" or "L" with its content intact."""
    mode = im.mode
    if mode in ("RGB", "L"):
        if "transparency" in im.info:  # a colour key: that colour is see-through
            return _composite_over_white(im)
        return im
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in im.info):
        return _composite_over_white(im)
    if mode == "P":
        # Palette images may still hold alpha in the palette itself (e.g. WebP/PNG "RGBA" palette).
        if im.palette is not None and im.palette.mode == "RGBA":
            return _composite_over_white(im)
        return im.convert("RGB")
    if mode == "1":
        return im.convert("L")
    if mode.startswith("I;16"):
        # Divide by 257 so 65535 -> 255 and 32896 -> 128: Pillow's convert("L") would clip.
        return _scale_to_uint8(np.asarray(im), full_scale=65535.0)
    if mode == "I":
        values = np.asarray(im)
        in_16bit = values.size == 0 or (values.min() >= 0 and values.max() <= 65535)
        return _scale_to_uint8(values, full_scale=65535.0 if in_16bit else None)
    if mode == "F":
        values = np.asarray(im)
        finite = values[np.isfinite(values)]
        unit = finite.size == 0 or (finite.min() >= 0.0 and finite.max() <= 1.0)
        return _scale_to_uint8(values, full_scale=1.0 if unit else None)
    # CMYK, YCbCr, LAB, HSV, ...: Pillow knows how to reach RGB.
    return im.convert("RGB")


def _resize(im: Image.Image, *, height: int, width: int, resize: str) -> Image.Image:
    if resize == "crop":
        # Center-crop to the target aspect ratio, then resize: the arithmetic of Keras'
        # smart_resize / crop_to_aspect_ratio. Cropping first (rather than resize(box=...))
        # keeps the bilinear filter from pulling in pixels outside the crop.
        src_w, src_h = im.size
        crop_w = max(min(src_w, int(src_h * width / height)), 1)
        crop_h = max(min(src_h, int(src_w * height / width)), 1)
        left, top = int((src_w - crop_w) / 2), int((src_h - crop_h) / 2)
        im = im.crop((left, top, left + crop_w, top + crop_h))
    if im.size == (width, height):
        return im
    return im.resize((width, height), Image.Resampling.BILINEAR)


def _size_text(n: int) -> str:
    if n >= 2**20:
        return f"{n / 2**20:g} MB"
    return f"{n / 2**10:g} KB" if n >= 2**10 else f"{n} bytes"


def _available_formats() -> tuple[str, ...]:
    """DECODE_FORMATS this Pillow build can open (Image.open fails on unknown names)."""
    Image.init()
    return tuple(f for f in DECODE_FORMATS if f in Image.OPEN)


def _bomb_reason(exc: Exception, pixels: int | None) -> str:
    if pixels is None:
        match = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = int(match.group(1)) if match else None
    limit = Image.MAX_IMAGE_PIXELS
    shown = f"{pixels}" if pixels is not None else "too many"
    return f"image has {shown} pixels, above the decompression-bomb limit of {limit}"


def decode_image(
    path: str | Path,
    *,
    height: int,
    width: int,
    channels: int = 3,
    max_bytes: int = 64 * 2**20,
    resize: str = "stretch",
) -> np.ndarray:
    """Decode one image file to a uint8 array (height, width, channels), the same way every time.

    `decode_pixels` decodes (EXIF, alpha over white, CMYK / palette / 16-bit / float content
    kept, bomb and truncation checks); this then resizes bilinearly: "stretch" to the target
    size (as Keras image_dataset_from_directory does) or "crop" to its aspect ratio first.

    Args:
        path: the image file.
        height: output height in pixels.
        width: output width in pixels.
        channels: 3 (RGB) or 1 (grayscale).
        max_bytes: refuse files larger than this.
        resize: "stretch" or "crop".

    Returns:
        A new, writable uint8 array of shape (height, width, channels).

    Raises:
        ImageDecodeError: the file cannot be used; the message is a short reason for users.
        QuantLensError: `channels`, `resize` or the size are not supported.
    """
    if resize not in RESIZE_POLICIES:
        raise QuantLensError(f"unknown resize policy {resize!r}; choose stretch or crop")
    if height <= 0 or width <= 0:
        raise QuantLensError(f"image size {height}x{width} is not usable; check the model input")
    pixels = decode_pixels(path, channels=channels, max_bytes=max_bytes)
    flat = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels)
    array = np.array(_resize(flat, height=height, width=width, resize=resize), dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    return array


def decode_pixels(
    path: str | Path, *, channels: int = 3, max_bytes: int = 64 * 2**20
) -> np.ndarray:
    """Decode one image file at its own size: the one decoder behind the model and every view.

    The file size is checked before reading. EXIF orientation is applied; transparency is
    composited over white; CMYK, palette, 1-bit, 16-bit and float images are converted so their
    content survives. Pillow's decompression-bomb limit is kept (its warning is an error here,
    too) and truncated files are refused. The gallery and the report call this too, so what
    they show is what the model was fed, before resizing.

    Args:
        path: the image file.
        channels: 3 (RGB) or 1 (grayscale, ITU-R 601-2 luma as Keras color_mode="grayscale").
        max_bytes: refuse files larger than this.

    Returns:
        A new, writable uint8 array of shape (H, W, channels) at the image's own size.

    Raises:
        ImageDecodeError: the file cannot be used; the message is a short reason for users.
        QuantLensError: `channels` is not supported.
    """
    if channels not in (1, 3):
        raise QuantLensError(
            f"models with {channels} input channels are not supported; "
            "QuantLens feeds RGB (3) or grayscale (1) images"
        )

    file = Path(path)
    limit_text = _size_text(max_bytes)
    try:
        size = file.stat().st_size
        if not file.is_file():
            raise ImageDecodeError("not a file")
        if size > max_bytes:
            raise ImageDecodeError(f"file is larger than {limit_text}")
        with file.open("rb") as f:
            data = f.read(max_bytes + 1)  # the file may have grown since stat()
    except FileNotFoundError:
        raise ImageDecodeError(NOT_FOUND) from None
    except OSError as exc:
        raise ImageDecodeError(f"cannot read file ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise ImageDecodeError(f"file is larger than {limit_text}")
    if not data:
        raise ImageDecodeError("empty file")

    try:
        # Image.open itself raises DecompressionBombError above twice the limit; a test suite
        # (or caller) that turns warnings into errors makes it raise the warning class too.
        im = Image.open(io.BytesIO(data), formats=_available_formats())
    except UnidentifiedImageError:
        raise ImageDecodeError("not an image file (format not recognised)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(_bomb_reason(exc, None)) from None
    except Exception as exc:  # a broken header can make any plugin raise anything
        raise ImageDecodeError(f"cannot read image header ({type(exc).__name__})") from None

    with im:
        pixels = im.size[0] * im.size[1]
        # Between 1x and 2x the limit Pillow only warns; treat that as the error it is, without
        # touching the process-wide warning filters (decoding may run in threads).
        if Image.MAX_IMAGE_PIXELS is not None and pixels > Image.MAX_IMAGE_PIXELS:
            raise ImageDecodeError(_bomb_reason(ValueError(), pixels))
        if pixels == 0:
            raise ImageDecodeError("image has no pixels (0 width or height)")
        try:
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageDecodeError(_bomb_reason(exc, pixels)) from None
        except (OSError, EOFError, SyntaxError) as exc:
            if isinstance(exc, EOFError) or "truncated" in str(exc).lower():
                raise ImageDecodeError("truncated image file") from None
            raise ImageDecodeError(f"corrupt image data ({exc})") from None
        except MemoryError:
            raise ImageDecodeError("image is too large to decode in memory") from None
        except Exception as exc:  # plugins raise ValueError, IndexError, struct.error ...
            raise ImageDecodeError(f"corrupt image data ({type(exc).__name__})") from None

        try:
            oriented = ImageOps.exif_transpose(im)
        except Exception:
            # A damaged EXIF block does not make the pixels unusable; keep them as stored.
            oriented = im
        flat = _to_rgb_or_l(oriented)
        if channels == 3 and flat.mode != "RGB":
            flat = flat.convert("RGB")
        elif channels == 1 and flat.mode != "L":
            flat = flat.convert("L")  # ITU-R 601-2 luma, as Keras color_mode="grayscale"
        array = np.array(flat, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    return array


def fit_png(pixels: np.ndarray, size: int) -> bytes:
    """PNG bytes of decoded uint8 pixels scaled so the longer side is `size` px, aspect kept.

    The one display resize: small images (8x8 digits) are enlarged with NEAREST so every pixel
    the model saw stays a crisp block; large ones are reduced with LANCZOS.
    """
    a = np.asarray(pixels, dtype=np.uint8)
    im = Image.fromarray(a[:, :, 0] if a.ndim == 3 and a.shape[2] == 1 else a)
    w, h = im.size
    scale = size / max(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
    buf = io.BytesIO()
    im.resize(new, resample).save(buf, format="PNG")
    return buf.getvalue()


def thumbnail_png(
    path: str | Path, *, size: int, channels: int = 3, max_bytes: int = 64 * 2**20
) -> bytes:
    """A PNG of the image as `decode_pixels` decodes it for the model, fitted to `size` px.

    Raises:
        ImageDecodeError: the file cannot be used (the same reasons a run would skip it).
    """
    return fit_png(decode_pixels(path, channels=channels, max_bytes=max_bytes), size)
