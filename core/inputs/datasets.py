"""Data sets: enumerate the samples of a CSV listing, class folders or a zip of either."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import posixpath
from collections import Counter
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from core.errors import DatasetError, QuantLensError
from core.inputs.archives import content_named, extract_once
from core.inputs.images import IMAGE_EXTENSIONS, NOT_FOUND
from core.inputs.paths import require_under_roots, resolve_inside
from core.types import Dataset, Sample, SkippedSample

LABELS_FILE = "labels.txt"
CSV_HEADER = "filepath,label"

_HIDDEN_FOLDERS = frozenset({"__MACOSX"})
_MAX_LABELS_BYTES = 16 * 2**20
_MAX_CSV_BYTES = 512 * 2**20

OUTSIDE_ROOT = "path outside the data set folder"


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
        extract_dir: where it is (or was already) extracted, suffixed with the archive's content
            hash (`content_named`), so another archive never reads this one's files.

    Returns:
        The folder holding the CSV listing, the class folders or the images.

    Raises:
        UnsafeArchive: the archive is refused.
        QuantLensError: the folder cannot be written.
    """
    return _unwrap(extract_once(zip_path, content_named(extract_dir, zip_path)).resolve())


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
        extract_dir: the folder a zip is extracted into, suffixed with its content hash
            (required for zips); an earlier, complete extraction of the same bytes is reused.
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
