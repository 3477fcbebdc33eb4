"""The stages' file plumbing: scratch names in the run folder, the decoded-image cache, and
atomic CSV / .npy writers."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from core.inputs import rundir
from core.jobs.protocol import SCRATCH_FILES

BATCH = 32  # images per decode / reference step


class DecodedCache:
    """Decoded uint8 images on disk, written once and read back in batches without mmap.

    Reading with explicit file reads keeps the resident set to one batch; a memory map would
    keep every touched page resident and grow with the data set.
    """

    def __init__(self, path: Path, shape: tuple[int, int, int]) -> None:
        self.path = path
        self.shape = shape
        self.item = int(np.prod(shape))

    def append(self, images: np.ndarray) -> None:
        with self.path.open("ab") as f:
            f.write(np.ascontiguousarray(images, dtype=np.uint8).tobytes())

    def __len__(self) -> int:
        return self.path.stat().st_size // self.item if self.path.exists() else 0

    def read(self, position: int) -> np.ndarray:
        """One decoded image by its position in the cache."""
        with self.path.open("rb") as f:
            f.seek(position * self.item)
            return np.frombuffer(f.read(self.item), dtype=np.uint8).reshape(self.shape)

    def batches(self, size: int = BATCH) -> Iterator[np.ndarray]:
        total = len(self)
        with self.path.open("rb") as f:
            for start in range(0, total, size):
                count = min(size, total - start)
                data = np.frombuffer(f.read(count * self.item), dtype=np.uint8)
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


def save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    rundir.write_atomic(path, buffer.getvalue())


def remove_scratch(run_dir: Path) -> None:
    """Delete the decoded cache, the reference state and the calibration set."""
    for name in SCRATCH_FILES:
        (run_dir / name).unlink(missing_ok=True)
