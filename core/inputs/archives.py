"""Extract user zips safely (refuse, never repair) and find a SavedModel inside one."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import uuid
import zipfile
import zlib
from pathlib import Path
from typing import IO

from core.errors import QuantLensError, UnsafeArchive, UnsupportedModel
from core.inputs.paths import is_absolute_anywhere

# Below this many extracted bytes a member cannot be a bomb whatever its ratio: small text
# files (a CSV of repeated paths, a labels.txt) legitimately compress more than 200:1.
_RATIO_FLOOR_BYTES = 1 << 20
_CHUNK = 1 << 16
_JUNK_FOLDERS = frozenset({"__MACOSX"})
_JUNK_FILES = frozenset({".DS_Store"})


def _member_parts(name: str) -> list[str]:
    """Split a member name on both separators: Windows tools write `a\\b.jpg`."""
    return [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]


def _is_junk(parts: list[str]) -> bool:
    return any(p in _JUNK_FOLDERS for p in parts) or (bool(parts) and parts[-1] in _JUNK_FILES)


def _mb(n: float) -> str:
    return f"{n / 2**20:.4g} MB"


def _check_members(
    zf: zipfile.ZipFile,
    label: str,
    *,
    max_members: int,
    max_total_bytes: int,
    max_ratio: float,
) -> list[tuple[zipfile.ZipInfo, list[str]]]:
    """Validate every member before anything is written; return (member, path parts) to write."""
    infos = zf.infolist()
    if len(infos) > max_members:
        raise UnsafeArchive(
            f"{label} has {len(infos)} members, above the limit of {max_members}; "
            "split it or zip fewer files"
        )
    plan: list[tuple[zipfile.ZipInfo, list[str]]] = []
    seen: set[str] = set()
    file_paths: set[str] = set()
    dir_paths: set[str] = set()
    declared_total = 0
    for info in infos:
        # orig_filename keeps what follows a NUL byte; zipfile silently cuts the name there.
        raw = info.orig_filename
        shown = repr(raw)
        if "\0" in raw:
            raise UnsafeArchive(f"{label} member {shown} has a NUL byte in its name; re-create it")
        if is_absolute_anywhere(raw):
            raise UnsafeArchive(
                f"{label} member {shown} is an absolute path; re-create the zip with relative paths"
            )
        parts = _member_parts(raw)
        if ".." in parts:
            raise UnsafeArchive(
                f"{label} member {shown} contains '..'; re-create the zip with paths inside it"
            )
        if stat.S_ISLNK(info.external_attr >> 16):
            raise UnsafeArchive(
                f"{label} member {shown} is a symbolic link; zip the files themselves, not links"
            )
        if info.flag_bits & 0x1:
            raise UnsafeArchive(
                f"{label} member {shown} is encrypted; re-create the zip without a password"
            )
        if not parts:
            continue  # "./" or "/"-only names carry nothing to write (absolute ones refused above)
        key = "/".join(parts)
        if key in seen:
            raise UnsafeArchive(
                f"{label} member {shown} appears twice; re-create the zip with unique names"
            )
        seen.add(key)
        if info.is_dir():
            dir_paths.add(key)
        else:
            file_paths.add(key)
            declared_total += info.file_size
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > _RATIO_FLOOR_BYTES and ratio > max_ratio:
                raise UnsafeArchive(
                    f"{label} member {shown} expands {ratio:.0f} times, above the limit of "
                    f"{max_ratio:g}; it looks like a zip bomb"
                )
        dir_paths.update("/".join(parts[:i]) for i in range(1, len(parts)))
        if not _is_junk(parts):
            plan.append((info, parts))
    clash = sorted(file_paths & dir_paths)
    if clash:
        raise UnsafeArchive(
            f"{label} member {clash[0]!r} is both a file and a folder; re-create the zip"
        )
    if declared_total > max_total_bytes:
        raise UnsafeArchive(
            f"{label} expands to {_mb(declared_total)}, above the limit of {_mb(max_total_bytes)};"
            " use a smaller data set or model"
        )
    return plan


def _copy_counted(
    src: IO[bytes],
    target: Path,
    *,
    label: str,
    name: str,
    compress_size: int,
    written_so_far: int,
    max_total_bytes: int,
    max_ratio: float,
) -> int:
    """Copy one member, counting real bytes: header sizes are whatever the archive claims."""
    written = 0
    # "xb": never follow or overwrite something already there.
    with target.open("xb") as out:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            if written_so_far + written > max_total_bytes:
                raise UnsafeArchive(
                    f"{label} expands past the limit of {_mb(max_total_bytes)} at member "
                    f"{name!r}; use a smaller data set or model"
                )
            if written > _RATIO_FLOOR_BYTES and written > max_ratio * max(compress_size, 1):
                raise UnsafeArchive(
                    f"{label} member {name!r} expands more than {max_ratio:g} times; "
                    "it looks like a zip bomb"
                )
            out.write(chunk)
    return written


def _clear(dest: Path, *, created: bool) -> None:
    """Remove what an aborted extraction wrote, leaving `dest` as it was before."""
    if created:
        shutil.rmtree(dest, ignore_errors=True)
        return
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def safe_extract(
    zip_path: Path,
    dest: Path,
    *,
    max_members: int = 20_000,
    max_total_bytes: int = 2 * 2**30,
    max_ratio: float = 200.0,
) -> Path:
    """Extract a user's zip into `dest`, refusing the whole archive if any member is unsafe.

    Every member is checked before anything is written: absolute names (POSIX or Windows),
    `..`, symbolic links, duplicates, encryption, and the member count. Total size and the
    per-member compression ratio are enforced while extracting, by counting the bytes that
    really come out (headers can lie). `__MACOSX/` and `.DS_Store` members are skipped.

    Args:
        zip_path: the archive.
        dest: the folder to extract into; it must not exist or be empty.
        max_members: refuse archives with more entries than this.
        max_total_bytes: refuse archives that expand to more than this many bytes.
        max_ratio: refuse a member (above 1 MB) that expands more than this many times.

    Returns:
        `dest`.

    Raises:
        UnsafeArchive: the archive is refused or corrupt; nothing is left in `dest`.
        QuantLensError: `zip_path` is missing or `dest` is not empty.
    """
    zip_path = Path(zip_path)
    dest = Path(dest)
    label = f"zip {zip_path.name}"
    if not zip_path.is_file():
        raise QuantLensError(f"zip {zip_path} does not exist; check the path or upload it again")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise QuantLensError(
            f"cannot extract {zip_path.name} into {dest}: it is not an empty folder; "
            "extract into a fresh folder"
        )
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise UnsafeArchive(
            f"{zip_path.name} is not a valid zip file (truncated or corrupt); re-create it"
        ) from exc
    with zf:
        plan = _check_members(
            zf,
            label,
            max_members=max_members,
            max_total_bytes=max_total_bytes,
            max_ratio=max_ratio,
        )
        created = not dest.exists()
        dest.mkdir(parents=True, exist_ok=True)
        real_dest = dest.resolve()
        total = 0
        try:
            for info, parts in plan:
                target = real_dest.joinpath(*parts)
                # Belt and braces: the parts were vetted, and `dest` was empty, so no link exists.
                if not target.resolve().is_relative_to(real_dest):
                    raise UnsafeArchive(f"{label} member {info.filename!r} escapes the folder")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src:
                    total += _copy_counted(
                        src,
                        target,
                        label=label,
                        name=info.filename,
                        compress_size=info.compress_size,
                        written_so_far=total,
                        max_total_bytes=max_total_bytes,
                        max_ratio=max_ratio,
                    )
        except UnsafeArchive:
            _clear(dest, created=created)
            raise
        except NotImplementedError as exc:
            _clear(dest, created=created)
            raise UnsafeArchive(
                f"{label} uses a compression method QuantLens cannot read ({exc}); "
                "re-create it with standard (deflate) compression"
            ) from exc
        except OSError as exc:
            # Reading damage surfaces as BadZipFile/EOFError below; an OSError here is the disk.
            _clear(dest, created=created)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise QuantLensError(
                    f"no space left to extract {zip_path.name}; free disk space and retry"
                ) from exc
            raise QuantLensError(
                f"cannot extract {zip_path.name} into {dest} ({exc.strerror or exc}); "
                "check the folder is writable"
            ) from exc
        except (zipfile.BadZipFile, EOFError, ValueError, zlib.error) as exc:
            # A bad CRC, a cut-off member or a broken deflate stream: the archive is damaged.
            _clear(dest, created=created)
            raise UnsafeArchive(
                f"{zip_path.name} is not a valid zip file (truncated or corrupt); re-create it"
            ) from exc
        except BaseException:
            _clear(dest, created=created)
            raise
    return dest


def find_saved_model_dir(root: Path) -> Path:
    """Find the one folder under `root` that holds `saved_model.pb` (e.g. inside a wrapper).

    Args:
        root: an extracted upload or a folder a user pointed at.

    Returns:
        The SavedModel folder (the one holding `saved_model.pb`).

    Raises:
        UnsupportedModel: no folder, or more than one, holds `saved_model.pb`.
    """
    root = Path(root)
    found: list[Path] = []
    # os.walk without followlinks: a link inside an upload must not lead us elsewhere.
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _JUNK_FOLDERS)
        if "saved_model.pb" in filenames:
            found.append(Path(dirpath))
    if not found:
        raise UnsupportedModel(
            f"no saved_model.pb found in {root.name}; zip the SavedModel folder "
            "(the one holding saved_model.pb and variables/)"
        )
    if len(found) > 1:
        listed = ", ".join(str(p.relative_to(root)) for p in found)
        raise UnsupportedModel(
            f"{root.name} holds several SavedModels ({listed}); upload one at a time"
        )
    return found[0]


def content_named(dest: Path, zip_path: Path) -> Path:
    """`dest` suffixed with the archive's content hash: `<run>/data-<16 hex>`.

    A run folder reused for another archive (a second CLI run into the same --out) then
    extracts into a new folder instead of reading the first archive's files, while a restarted
    worker, which sees the same bytes, finds and reuses its own extraction.

    Raises:
        QuantLensError: the archive cannot be read.
    """
    try:
        with open(zip_path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        raise QuantLensError(
            f"cannot read {Path(zip_path).name} ({exc.strerror or exc}); check the path"
        ) from None
    return Path(dest).with_name(f"{Path(dest).name}-{digest[:16]}")


def extract_once(zip_path: Path, dest: Path) -> Path:
    """Extract a user's zip into `dest` unless an earlier call already did, and return `dest`.

    The archive is extracted into a hidden sibling folder and renamed into place, so `dest`
    exists only when complete: a worker restarted after a crash (or a second tab extracting the
    same upload) reuses it and reads exactly what the first one read.

    Args:
        zip_path: the archive.
        dest: where the extracted files live; reused as-is when it already exists.

    Returns:
        `dest`.

    Raises:
        UnsafeArchive: the archive is refused or corrupt; nothing is left behind.
        QuantLensError: `zip_path` is missing or the folder cannot be written.
    """
    dest = Path(dest)
    if dest.is_dir():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    safe_extract(zip_path, staging)
    try:
        staging.rename(dest)
    except OSError:
        # Another process finished the same extraction first: keep its copy, drop ours.
        shutil.rmtree(staging, ignore_errors=True)
        if not dest.is_dir():
            raise QuantLensError(
                f"cannot extract {Path(zip_path).name} into {dest}; check the folder is writable"
            ) from None
    return dest
