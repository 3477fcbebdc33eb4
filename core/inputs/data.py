"""The data layer: enumerate samples (CSV, class folders, zip), decode images, apply presets."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import posixpath
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from types import MappingProxyType

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import DatasetError, ImageDecodeError, QuantLensError
from core.inputs.archives import extract_once
from core.inputs.paths import require_under_roots, resolve_inside
from core.types import Dataset, Preset, Sample, SkippedSample

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
LABELS_FILE = "labels.txt"
CSV_HEADER = "filepath,label"

# Pillow formats we decode. Restricting the list keeps untrusted files away from parsers we do
# not need (EPS, for one, hands the file to Ghostscript). Multi-picture phone JPEGs (MPO) open
# through the JPEG plugin.
DECODE_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "BMP", "GIF", "WEBP", "TIFF")
RESIZE_POLICIES: tuple[str, ...] = ("stretch", "crop")

_HIDDEN_FOLDERS = frozenset({"__MACOSX"})
_MAX_LABELS_BYTES = 16 * 2**20
_MAX_CSV_BYTES = 512 * 2**20

OUTSIDE_ROOT = "path outside the data set folder"
NOT_FOUND = "file not found"


# --------------------------------------------------------------------------------------------
# Enumerating samples


def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in _HIDDEN_FOLDERS


def _is_image_name(name: str) -> bool:
    return _visible(name) and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _read_labels(path: Path) -> tuple[str, ...]:
    """Read a labels.txt: one class name per line, in index order."""
    try:
        size = path.stat().st_size
        if size > _MAX_LABELS_BYTES:
            raise DatasetError(
                f"labels file {path.name} is {size / 2**20:.0f} MB; "
                "a labels file holds one class name per line"
            )
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DatasetError(f"labels file {path} does not exist; check the path") from None
    except UnicodeDecodeError:
        raise DatasetError(f"labels file {path.name} is not UTF-8 text; save it as UTF-8") from None
    except IsADirectoryError:
        raise DatasetError(f"labels file {path} is a folder; pass the labels.txt file") from None
    except OSError as exc:
        raise DatasetError(f"cannot read labels file {path} ({exc.strerror}); check it") from None
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise DatasetError(
            f"labels file {path.name} is empty; write one class name per line, in index order"
        )
    if "" in lines:
        raise DatasetError(
            f"labels file {path.name} line {lines.index('') + 1} is empty; "
            "write one class name per line, in index order"
        )
    return tuple(lines)


def _root_labels(root: Path) -> tuple[str, ...] | None:
    """The data root's own labels.txt, if any (a link pointing out of the root is ignored)."""
    candidate = resolve_inside(root, LABELS_FILE)
    if candidate is None or not candidate.is_file():
        return None
    return _read_labels(candidate)


def _as_int(text: str) -> int | None:
    """`"3"` and `"3.0"` (as spreadsheets write it) are the index 3; anything else is a name."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


class _ClassList:
    """Maps a label (class name or integer index) to a class index, or to a skip reason."""

    def __init__(self, names: tuple[str, ...] | None, source: str) -> None:
        self.names = names
        self.source = source
        self._index: dict[str, int | None] = {}
        for i, name in enumerate(names or ()):
            # Real label files repeat names (ImageNet lists "crane" twice): such a name is
            # ambiguous, so rows using it are skipped rather than silently given one index.
            self._index[name] = None if name in self._index else i

    def lookup(self, text: str) -> tuple[int | None, str | None]:
        """Return (index, None) or (None, reason to skip)."""
        number = _as_int(text)
        if self.names is None:
            if number is None:  # only reachable if the caller built no class list for names
                return None, f"label '{text}' is not a class index"
            if number < 0:
                return None, f"label {number} is negative; class indices start at 0"
            return number, None
        if text in self._index:
            found = self._index[text]
            if found is None:
                return None, f"label '{text}' appears more than once in {self.source}"
            return found, None
        if number is not None:
            if 0 <= number < len(self.names):
                return number, None
            return None, f"label {number} is outside the {len(self.names)} classes in {self.source}"
        return None, f"label '{text}' is not a class in {self.source}"


def _finish(
    *,
    root: Path,
    kind: str,
    found: list[tuple[str, Path, int | None]],
    skipped: list[SkippedSample],
    class_names: tuple[str, ...] | None,
) -> Dataset:
    """Number the kept samples and refuse a data set with nothing usable in it."""
    if not found:
        if not skipped:
            exts = " ".join(sorted(IMAGE_EXTENSIONS))
            raise DatasetError(
                f"no images found in {root}; put images ({exts}) in one sub-folder per class, "
                f"directly in the folder, or list them in a CSV ({CSV_HEADER})"
            )
        reason, count = Counter(s.reason for s in skipped).most_common(1)[0]
        raise DatasetError(
            f"no usable samples in {root}: all {len(skipped)} were skipped, most often "
            f"({count}) for '{reason}'; fix those paths or labels"
        )
    samples = tuple(
        Sample(index=i, path=str(path), relpath=rel, label=label)
        for i, (rel, path, label) in enumerate(found)
    )
    return Dataset(
        path=str(root),
        kind=kind,
        samples=samples,
        skipped=tuple(skipped),
        class_names=class_names,
        has_labels=any(s.label is not None for s in samples),
    )


def _read_csv_rows(csv_path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and non-blank rows of a CSV, with one-line errors for what commonly goes wrong."""
    name = csv_path.name
    size = csv_path.stat().st_size
    if size > _MAX_CSV_BYTES:
        raise DatasetError(f"CSV {name} is {size / 2**20:.0f} MB; split it into smaller files")
    try:
        text = csv_path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DatasetError(f"CSV {name} is not UTF-8 text; save it as UTF-8") from None
    if not text.strip():
        raise DatasetError(
            f"CSV {name} is empty; write the header {CSV_HEADER} and one row per image"
        )
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
        rows = [row for row in reader if any(cell.strip() for cell in row)]
    except csv.Error as exc:
        raise DatasetError(
            f"CSV {name} is malformed at line {reader.line_num} ({exc}); fix its quoting"
        ) from None
    return header, rows


def _csv_column_index(header: list[str], column: str) -> int | None:
    names = [h.strip().lower() for h in header]
    return names.index(column) if column in names else None


def _csv_has_filepath(csv_path: Path) -> bool:
    """Peek at a CSV's header: is it a QuantLens data set listing?"""
    try:
        with csv_path.open(encoding="utf-8-sig", newline="") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return _csv_column_index(header, "filepath") is not None


def _openable_relpath(root: Path, rel: str, resolved: Path) -> str:
    """The row's path, tidied ("sub/../a.jpg" -> "a.jpg"), such that root/relpath is the file.

    Readers of samples.csv open `root / relpath`; a lexically tidied path can name another file
    when a linked folder precedes "..", so fall back to the canonical path then.
    """
    tidy = posixpath.normpath(rel)
    if (root / tidy).resolve() == resolved:
        return tidy
    return resolved.relative_to(root).as_posix()


def _from_csv(csv_path: Path, labels: tuple[str, ...] | None, labels_source: str) -> Dataset:
    root = csv_path.parent
    if labels is None:
        labels = _root_labels(root)
        labels_source = LABELS_FILE
    header, rows = _read_csv_rows(csv_path)
    path_col = _csv_column_index(header, "filepath")
    if path_col is None:
        has = ", ".join(repr(h) for h in header) or "none"
        raise DatasetError(
            f"CSV {csv_path.name} has no filepath column (its columns: {has}); "
            f"the expected header is {CSV_HEADER}"
        )
    if not rows:
        raise DatasetError(
            f"CSV {csv_path.name} is empty: it has a header but no rows; add one row per image"
        )
    label_col = _csv_column_index(header, "label")

    def cell(row: list[str], col: int | None) -> str:
        return row[col].strip() if col is not None and col < len(row) else ""

    label_texts = [cell(row, label_col) for row in rows]
    given = [t for t in label_texts if t]
    if labels is not None:
        classes = _ClassList(labels, labels_source)
    elif given and all(_as_int(t) is not None for t in given):
        classes = _ClassList(None, "")  # indices; the model's class count bounds them later
    elif given:
        # Names without labels.txt: sorted unique names, the order Keras gives class folders.
        classes = _ClassList(tuple(sorted(set(given))), "the label column")
    else:
        classes = _ClassList(None, "")

    found: list[tuple[str, Path, int | None]] = []
    skipped: list[SkippedSample] = []
    for line, (row, label_text) in enumerate(zip(rows, label_texts, strict=True), start=2):
        written = cell(row, path_col)
        if not written:
            skipped.append(SkippedSample(f"(row {line})", "empty filepath"))
            continue
        # Windows-made CSVs write "cat\\01.jpg"; a backslash is no separator on POSIX.
        rel = str(PurePosixPath(written.replace("\\", "/")))
        resolved = resolve_inside(root, rel)
        if resolved is None:
            skipped.append(SkippedSample(written, OUTSIDE_ROOT))
            continue
        if not resolved.exists():
            skipped.append(SkippedSample(written, NOT_FOUND))
            continue
        if not resolved.is_file():
            skipped.append(SkippedSample(written, "not a file"))
            continue
        label: int | None = None
        if label_text:
            label, reason = classes.lookup(label_text)
            if reason is not None:
                skipped.append(SkippedSample(written, reason))
                continue
        found.append((_openable_relpath(root, rel, resolved), resolved, label))
    return _finish(root=root, kind="csv", found=found, skipped=skipped, class_names=classes.names)


def _images_under(folder: Path, root: Path) -> list[str]:
    """Image files under `folder` (recursively, like Keras), as sorted relpaths from `root`."""
    rels: list[PurePosixPath] = []
    # followlinks=False: a linked sub-folder is not walked (Keras does the same by default).
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = [d for d in dirnames if _visible(d)]
        base = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
        rels.extend(base / f for f in filenames if _is_image_name(f))
    return [str(r) for r in sorted(rels, key=lambda r: r.parts)]


def _from_class_folders(
    root: Path,
    class_dirs: list[str],
    labels: tuple[str, ...] | None,
    labels_source: str,
) -> Dataset:
    if labels is None:
        classes = _ClassList(tuple(class_dirs), "the class folders")
    else:
        classes = _ClassList(labels, labels_source)
    found: list[tuple[str, Path, int | None]] = []
    skipped: list[SkippedSample] = []
    for class_dir in class_dirs:
        label, reason = classes.lookup(class_dir)
        if reason is not None:
            reason = f"class folder '{class_dir}': {reason}"
        for rel in _images_under(root / class_dir, root):
            resolved = resolve_inside(root, rel)
            if resolved is None:
                skipped.append(SkippedSample(rel, OUTSIDE_ROOT))
            elif not resolved.is_file():
                skipped.append(SkippedSample(rel, NOT_FOUND))  # a dangling link
            elif reason is not None:
                skipped.append(SkippedSample(rel, reason))
            else:
                found.append((rel, resolved, label))
    # Keras ignores images next to the class folders; list them so the user sees why.
    for entry in sorted(os.listdir(root)):
        if _is_image_name(entry) and (root / entry).is_file():
            skipped.append(SkippedSample(entry, "image is not inside a class folder"))
    return _finish(
        root=root, kind="folder", found=found, skipped=skipped, class_names=classes.names
    )


def _from_flat_folder(root: Path, labels: tuple[str, ...] | None) -> Dataset:
    found: list[tuple[str, Path, int | None]] = []
    skipped: list[SkippedSample] = []
    for entry in sorted(os.listdir(root)):
        if not _is_image_name(entry):
            continue
        resolved = resolve_inside(root, entry)
        if resolved is None:
            skipped.append(SkippedSample(entry, OUTSIDE_ROOT))
        elif not resolved.is_file():
            skipped.append(SkippedSample(entry, NOT_FOUND))
        else:
            found.append((entry, resolved, None))
    return _finish(root=root, kind="folder", found=found, skipped=skipped, class_names=labels)


def _from_folder(root: Path, labels: tuple[str, ...] | None, labels_source: str) -> Dataset:
    """Detect the layout of a folder: a CSV listing, class sub-folders, or bare images."""
    entries = sorted(e for e in os.listdir(root) if _visible(e))
    class_dirs = [e for e in entries if (root / e).is_dir()]
    csvs = [e for e in entries if e.lower().endswith(".csv") and (root / e).is_file()]
    listings = [c for c in csvs if _csv_has_filepath(root / c)]
    # A filepath,label CSV describes the data set explicitly, so it wins over sub-folders:
    # "data.csv + images/" is a CSV data set, not a one-class folder data set.
    if len(listings) == 1:
        return _from_csv(root / listings[0], labels, labels_source)
    if len(listings) > 1:
        raise DatasetError(
            f"folder {root} holds several CSV listings ({', '.join(listings)}); pass the CSV to use"
        )
    if class_dirs:
        if labels is None:
            labels = _root_labels(root)
            labels_source = LABELS_FILE
        return _from_class_folders(root, class_dirs, labels, labels_source)
    if len(csvs) == 1:
        return _from_csv(root / csvs[0], labels, labels_source)  # raises: names its columns
    if len(csvs) > 1:
        raise DatasetError(
            f"folder {root} holds several CSV files ({', '.join(csvs)}) and none has a "
            f"filepath column; pass the CSV to use, with the header {CSV_HEADER}"
        )
    if labels is None:
        labels = _root_labels(root)
    return _from_flat_folder(root, labels)


def _unwrap(root: Path) -> Path:
    """Descend through single wrapper folders, as zipping a folder produces (`data/...`)."""
    while True:
        entries = [e for e in os.listdir(root) if _visible(e)]
        if len(entries) != 1 or not (root / entries[0]).is_dir():
            return root
        root = root / entries[0]


def data_root_from_zip(zip_path: Path, extract_dir: Path) -> Path:
    """Extract a zipped data set (once) and return its data root, below any wrapper folders.

    The one way a zip becomes a data set: the CLI, the worker, a restarted worker and the
    Setup page all call it, so `digits48/val.csv` zipped in a wrapper folder reads the same
    as `val.csv` zipped at the root, and a second call reads what the first extracted.

    Args:
        zip_path: the archive.
        extract_dir: where it is (or was already) extracted.

    Returns:
        The folder holding the CSV listing, the class folders or the images.

    Raises:
        UnsafeArchive: the archive is refused.
        QuantLensError: the folder cannot be written.
    """
    return _unwrap(extract_once(zip_path, extract_dir).resolve())


def load_dataset(
    path: str | Path,
    *,
    labels_file: str | Path | None = None,
    extract_dir: Path | None = None,
    allowed_roots: Sequence[Path] | None = None,
) -> Dataset:
    """Enumerate the samples of a data set: a CSV, a folder, or a zip of either.

    Layouts: a `.csv` (`filepath,label`; paths relative to the CSV's folder, the data root);
    a folder holding one such CSV; a folder with one sub-folder per class (classes in sorted()
    order, as Keras does; hidden entries ignored; images in nested folders included); a folder
    of images (unlabelled); a `.zip` of any of these, extracted safely (single wrapper folders
    are descended into). Labels may be indices or class names; a `labels.txt` (explicit, else in
    the data root) gives class names in index order.

    Rows and files that cannot be used (missing, outside the data root, label not in the
    class list) are not errors: they are listed in `Dataset.skipped` with a one-line reason.

    Args:
        path: the CSV, folder or zip.
        labels_file: a labels.txt to use instead of the one in the data root.
        extract_dir: the folder a zip is extracted into (required for zips); an earlier,
            complete extraction there is reused.
        allowed_roots: if given, `path` (and `labels_file`) must lie under one of these.

    Returns:
        The Dataset; `path` is the absolute data root, samples keep file order.

    Raises:
        DatasetError: the path is missing or unreadable, a CSV has no filepath column or no
            rows, no image is found, or every sample was skipped.
        UnsafeArchive: a zip was refused.
        QuantLensError: the path is outside `allowed_roots`.
    """
    given = Path(path).expanduser()
    if allowed_roots is not None:
        require_under_roots(given, allowed_roots, what="data set")
    if not given.exists():
        raise DatasetError(f"data set {path} does not exist; check the path or upload the files")
    source = given.resolve()

    labels: tuple[str, ...] | None = None
    labels_source = LABELS_FILE
    if labels_file is not None:
        labels_path = Path(labels_file).expanduser()
        if allowed_roots is not None:
            require_under_roots(labels_path, allowed_roots, what="labels file")
        labels = _read_labels(labels_path)
        labels_source = labels_path.name

    try:
        if source.is_dir():
            return _from_folder(source, labels, labels_source)
        suffix = source.suffix.lower()
        if suffix == ".csv":
            return _from_csv(source, labels, labels_source)
        if suffix == ".zip":
            if extract_dir is None:
                raise QuantLensError(
                    f"cannot open {source.name}: a zip data set needs a folder to extract into"
                )
            return _from_folder(
                data_root_from_zip(source, Path(extract_dir)), labels, labels_source
            )
    except OSError as exc:  # permission denied, a link loop, an I/O error while listing
        raise DatasetError(
            f"cannot read {exc.filename or path} ({exc.strerror or exc}); check it is readable"
        ) from None
    raise DatasetError(
        f"data set {source.name} is not a CSV, a folder or a zip; "
        "pass a .csv file, an image folder, or a .zip of either"
    )


def dataset_sha256(dataset: Dataset) -> str:
    """A content hash of what a run is evaluated on: every listed sample and the class names.

    Hashes each sample's relative path, label and image *bytes* (not mtimes: a data set copied
    to another machine is the same data), the skipped rows' paths and reasons, and the class
    names. Two CSVs in one folder that list different images or labels hash differently; a
    reformatted CSV with the same rows does not. Reading the bytes costs one pass over the
    images, which the decode step makes anyway (and finds in the page cache afterwards).
    """
    digest = hashlib.sha256()

    def add(*parts: object) -> None:
        for part in parts:
            digest.update(str(part).encode("utf-8", "surrogateescape"))
            digest.update(b"\0")

    add("classes", *(dataset.class_names or ()))
    for sample in dataset.samples:
        add("sample", sample.relpath, "" if sample.label is None else sample.label)
        try:
            with open(sample.path, "rb") as f:
                digest.update(hashlib.file_digest(f, "sha256").digest())
        except OSError as exc:  # listed but unreadable now: decoding will skip it, say so here
            add("unreadable", type(exc).__name__)
    for skipped in dataset.skipped:
        add("skipped", skipped.relpath, skipped.reason)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# Decoding images


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


# --------------------------------------------------------------------------------------------
# Preprocessing presets

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
