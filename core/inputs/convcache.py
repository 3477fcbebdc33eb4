"""The workspace's conversion cache: `.tflite` bytes by content hash, capped in size.

Converters put each model they make here (core.engine.convert, core.engine.quantizer) and take
it back on a hit. Every hit touches the file (its mtime is its last use), and every write evicts
the least recently used files until the folder is back under its cap: a workspace that converts
for months never fills its disk. `python -m core clean` trims the cache now; `--cache` empties it.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from core.errors import QuantLensError
from core.inputs import rundir

CACHE_ENV = "QUANTLENS_CACHE"  # another folder for the cache (tests, shared disks)
CAP_ENV = "QUANTLENS_CACHE_MAX_BYTES"
DEFAULT_CAP_BYTES = 2 * 2**30  # 2 GiB: a few hundred conversions of mobile-sized models
SUFFIX = ".tflite"


@dataclass(frozen=True)
class Freed:
    """What an eviction or a clean removed, and what the cache still holds."""

    files: int
    bytes: int
    kept_files: int
    kept_bytes: int


def cache_dir() -> Path:
    """Where converted models are kept: $QUANTLENS_CACHE, else `<workspace>/cache/tflite`."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else rundir.cache_root() / "tflite"


def cap_bytes() -> int:
    """The cache's size cap: $QUANTLENS_CACHE_MAX_BYTES, else 2 GiB.

    Raises:
        QuantLensError: the variable is set but is not a whole number of bytes >= 0.
    """
    raw = os.environ.get(CAP_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_CAP_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise QuantLensError(f"{CAP_ENV} must be a whole number of bytes (0 or more); got {raw!r}")
    return value


def read_cached(path: Path) -> bytes | None:
    """The cached bytes at `path` (touched: used now), or None on a miss.

    A file evicted by another process between the check and the read is a miss too.
    """
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None
    with contextlib.suppress(OSError):
        os.utime(path)
    return data


def write_cached(path: Path, data: bytes, *, cap: int | None = None) -> None:
    """Keep `data` at `path` atomically, then evict the least recently used files beyond the
    cap (`cap_bytes()` by default)."""
    rundir.write_atomic(path, data)
    evict(path.parent, cap_bytes() if cap is None else cap)


def _entries(folder: Path) -> list[tuple[float, int, Path]]:
    """(last use, size, path) of every cached model, least recently used first."""
    out = []
    for path in folder.glob(f"*{SUFFIX}"):
        try:
            stat = path.stat()
        except FileNotFoundError:  # evicted by another process meanwhile
            continue
        out.append((stat.st_mtime, stat.st_size, path))
    return sorted(out, key=lambda e: (e[0], e[2].name))


def evict(folder: Path, cap: int) -> Freed:
    """Remove the least recently used cached models until `folder` holds at most `cap` bytes."""
    entries = _entries(folder)
    total = sum(size for _, size, _ in entries)
    files = freed = 0
    for _, size, path in entries:
        if total <= cap:
            break
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            files += 1
            freed += size
        total -= size
    return Freed(files, freed, len(entries) - files, total)


def clean(folder: Path, *, everything: bool) -> Freed:
    """Trim `folder` to the cap, or with `everything` remove every cached model."""
    return evict(folder, 0 if everything else cap_bytes())


def freed_sentence(freed: Freed, folder: Path) -> str:
    """What `clean` prints: what it removed and what the cache still holds."""
    kept = f"{freed.kept_files} cached model{'s' * (freed.kept_files != 1)}"
    kept += f" ({_size(freed.kept_bytes)}) kept"
    if not freed.files:
        return f"nothing to free in {folder}: {kept}"
    plural = "s" * (freed.files != 1)
    return f"freed {_size(freed.bytes)}: {freed.files} cached model{plural} from {folder}; {kept}"


def _size(n: int) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.1f} kB" if n >= 1e3 else f"{n} bytes"
