"""The stages' file plumbing: scratch names in the run folder, the decoded-image cache, and
atomic CSV / .npy writers."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from core.inputs import rundir
from core.runfolder.protocol import SCRATCH_FILES

BATCH = 32  # images per decode / reference step


class DecodedCache:
    """Decoded uint8 images (or other fixed-size rows) on disk, appended batch by batch and
    read back in batches without mmap.

    Reading with explicit file reads keeps the resident set to one batch; a memory map would
    keep every touched page resident and grow with the data set.
    """

    def __init__(
        self, path: Path, shape: tuple[int, ...], dtype: type[np.generic] = np.uint8
    ) -> None:
        self.path = path
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.item = int(np.prod(shape)) * self.dtype.itemsize

    def append(self, images: np.ndarray) -> None:
        with self.path.open("ab") as f:
            f.write(np.ascontiguousarray(images, dtype=self.dtype).tobytes())

    def __len__(self) -> int:
        return self.path.stat().st_size // self.item if self.path.exists() else 0

    def read(self, position: int) -> np.ndarray:
        """One decoded image by its position in the cache."""
        with self.path.open("rb") as f:
            f.seek(position * self.item)
            return np.frombuffer(f.read(self.item), dtype=self.dtype).reshape(self.shape)

    def batches(self, size: int = BATCH) -> Iterator[np.ndarray]:
        total = len(self)
        with self.path.open("rb") as f:
            for start in range(0, total, size):
                count = min(size, total - start)
                data = np.frombuffer(f.read(count * self.item), dtype=self.dtype)
                yield data.reshape((count, *self.shape))


def write_csv(path: Path, columns: dict[str, Any]) -> None:
    """Write named columns as a CSV (atomically); floats with 6 significant digits, NaN empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    names = list(columns)
    writer.writerow(names)
    for row in zip(*(columns[n] for n in names), strict=True):
        writer.writerow([_csv_value(v) for v in row])
    rundir.write_atomic(path, buffer.getvalue().encode("utf-8"))


def _csv_value(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return "" if not np.isfinite(value) else f"{float(value):.6g}"
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


class CsvAppender:
    """A CSV written a batch of rows at a time: the header on creation, then appended rows.

    Nothing is held between batches, so memory does not grow with the number of rows; the
    file on disk always holds every batch appended so far.
    """

    def __init__(self, path: Path, names: list[str]) -> None:
        self.path = path
        self.names = names
        with path.open("w", encoding="utf-8", newline="") as f:
            csv.writer(f, lineterminator="\n").writerow(names)

    def append(self, columns: dict[str, Any]) -> None:
        """Append one row per element of the (equally long) columns, named as in the header."""
        with self.path.open("a", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, lineterminator="\n")
            for row in zip(*(columns[n] for n in self.names), strict=True):
                writer.writerow([_csv_value(v) for v in row])


class NpyAppender:
    """A float32 [rows, columns] .npy written a batch of rows at a time.

    The header states the final shape up front; the rows follow as they are appended, so a
    crash leaves the batches written so far (np.load refuses the file until all are there).
    """

    def __init__(self, path: Path, rows: int, columns: int) -> None:
        self.path = path
        self.columns = columns
        header = {"descr": "<f4", "fortran_order": False, "shape": (rows, columns)}
        with path.open("wb") as f:
            np.lib.format.write_array_header_1_0(f, header)

    def append(self, rows: np.ndarray) -> None:
        block = np.ascontiguousarray(rows, dtype="<f4").reshape(-1, self.columns)
        with self.path.open("ab") as f:
            f.write(block.tobytes())


def npy_rows(path: Path, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of a 2-D .npy, read with explicit file reads (no memory map).

    A memory map would keep every page it touched resident, and grow with the data set.
    """
    with path.open("rb") as f:
        shape, fortran, dtype = _npy_header(f)
        if fortran or len(shape) != 2:
            raise ValueError(f"{path.name} is not a C-ordered 2-D array")
        stop = min(stop, shape[0])
        row_bytes = shape[1] * dtype.itemsize
        f.seek(max(start, 0) * row_bytes, 1)
        count = max(stop - start, 0)
        data = np.frombuffer(f.read(count * row_bytes), dtype=dtype)
    return data.reshape(-1, shape[1])


def npy_shape(path: Path) -> tuple[int, ...]:
    """The shape a .npy file's header states."""
    with path.open("rb") as f:
        shape, _, _ = _npy_header(f)
    return tuple(shape)


def _npy_header(f: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    """(shape, fortran_order, dtype) of an open .npy; leaves `f` at the first data byte."""
    major, _ = np.lib.format.read_magic(f)
    if major == 1:
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    rundir.write_atomic(path, buffer.getvalue())


def remove_scratch(run_dir: Path) -> None:
    """Delete the decoded cache, the reference state and the calibration set."""
    for name in SCRATCH_FILES:
        (run_dir / name).unlink(missing_ok=True)
