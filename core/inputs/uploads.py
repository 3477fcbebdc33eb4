"""Files uploaded through Setup: stored once by content hash, bound to the runs that used them.

Layout, in the workspace:

    uploads/<sha256[:16]>/<file name>    the uploaded bytes
    uploads/<sha256[:16]>/extracted/     a zip's contents (the Setup preview, a zipped model)
    uploads/<sha256[:16]>/.picked        touched whenever Setup is given this file
    uploads/<sha256[:16]>/used-by/<id>   one empty file per run launched with it

Lifetime, applied at server start (`remove_stale_uploads`): an upload that a run in the store
points at, or that a run folder launched with it still exists for, is kept as long as that run
exists; one whose runs were all deleted is removed; one never used by a run is removed after
`MAX_IDLE_HOURS` without being picked again.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from core.errors import QuantLensError
from core.inputs.rundir import runs_root, workspace_home

UPLOADS = "uploads"
EXTRACTED = "extracted"
PICKED = ".picked"
USED_BY = "used-by"
MAX_IDLE_HOURS = 24.0


def uploads_root(home: Path | None = None) -> Path:
    """The folder every upload lives under."""
    return (home or workspace_home()) / UPLOADS


def save_upload(data: bytes, name: str, *, home: Path | None = None) -> Path:
    """Store uploaded bytes under their content hash (the same file is stored once).

    Args:
        data: the file's bytes.
        name: the name the browser gave it, a bare file name.
        home: the workspace; default $QUANTLENS_HOME or ./workspace.

    Returns:
        The stored file.

    Raises:
        QuantLensError: the name is empty, `.`, `..` or holds a path separator (a browser
            sends a bare file name; anything else would be written outside the upload folder
            or fail as a folder).
    """
    check_upload_name(name)
    digest = hashlib.sha256(data).hexdigest()[:16]
    folder = uploads_root(home) / digest
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if not target.is_file():
        from core.inputs.rundir import write_atomic

        write_atomic(target, data)
    (folder / PICKED).touch()
    return target


def check_upload_name(name: str) -> None:
    """Refuse an upload name that is not a plain file name, in one line (the folder's own
    entries are refused too: an upload named `extracted` would take the zip's folder)."""
    reserved = ("", ".", "..", PICKED, EXTRACTED, USED_BY)
    if name.strip() in reserved or any(c in name for c in ("/", "\\", "\0")):
        raise QuantLensError(
            f"upload name {name!r} is not a file name; rename the file (e.g. model.keras) "
            "and upload it again"
        )


def extracted_dir(upload: Path) -> Path:
    """Where an uploaded zip is extracted: next to it, inside its own upload folder."""
    return upload.parent / EXTRACTED


def upload_folder(path: str | Path, *, home: Path | None = None) -> Path | None:
    """The `uploads/<hash>` folder `path` lies in, or None for a path outside the uploads."""
    root = uploads_root(home).resolve()
    try:
        relative = Path(path).resolve().relative_to(root)
    except ValueError:
        return None
    return root / relative.parts[0] if relative.parts else None


def is_stored_upload(path: str | Path, *, home: Path | None = None) -> bool:
    """Whether `path` is a file the upload store still holds (stale uploads are removed)."""
    return upload_folder(path, home=home) is not None and Path(path).is_file()


def model_from_upload(upload: Path) -> Path:
    """The model path a run gets for an uploaded model file.

    A `.keras` file is used as it is; a `.zip` is extracted once next to it (see
    `extracted_dir`) and the SavedModel folder inside, below any wrapper folders, is used.

    Raises:
        UnsafeArchive: the zip is refused or corrupt.
        UnsupportedModel: the zip holds no SavedModel, or more than one.
        QuantLensError: the upload folder cannot be written.
    """
    if upload.suffix.lower() != ".zip":
        return upload
    from core.inputs.archives import extract_once, find_saved_model_dir

    return find_saved_model_dir(extract_once(upload, extracted_dir(upload)))


def bind_to_run(paths: Iterable[str | None], run_id: str, *, home: Path | None = None) -> None:
    """Record that run `run_id` used the uploads among `paths` (others are ignored)."""
    for path in paths:
        folder = upload_folder(path, home=home) if path else None
        if folder is not None and folder.is_dir():
            (folder / USED_BY).mkdir(exist_ok=True)
            (folder / USED_BY / run_id).touch()


def _recorded_runs(folder: Path) -> list[str]:
    try:
        return [p.name for p in (folder / USED_BY).iterdir()]
    except OSError:
        return []


def _idle_hours(folder: Path, now: float) -> float:
    marker = folder / PICKED
    try:
        last = marker.stat().st_mtime if marker.exists() else folder.stat().st_mtime
    except OSError:
        return 0.0
    return (now - last) / 3600.0


def remove_stale_uploads(
    referenced: Iterable[str],
    *,
    home: Path | None = None,
    now: float | None = None,
    max_idle_hours: float = MAX_IDLE_HOURS,
) -> list[Path]:
    """Remove the uploads no run needs any more (see the module docstring for the rule).

    Args:
        referenced: every model and data path the runs in the store point at.
        home: the workspace.
        now: the current time (seconds since the epoch); default time.time().
        max_idle_hours: how long an upload never used by a run is kept after it was last picked.

    Returns:
        The upload folders that were removed.
    """
    root = uploads_root(home)
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    runs = runs_root(home or workspace_home())
    kept = {folder for p in referenced if (folder := upload_folder(p, home=home)) is not None}
    removed: list[Path] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
        if folder.resolve() in kept:
            continue
        users = _recorded_runs(folder)
        if any((runs / run_id).exists() for run_id in users):
            continue  # a run folder still holds it (e.g. its row is in a database moved aside)
        if users or _idle_hours(folder, now) > max_idle_hours:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def clean_workspace_uploads(*, home: Path | None = None) -> list[Path]:
    """At server start: remove stale uploads, keeping everything any stored run points at.

    A store that cannot be read removes nothing: without the list of runs, no upload is known
    to be unused.
    """
    from core.history.store import open_store

    try:
        store = open_store(home or workspace_home())
        try:
            rows = store.list_runs(limit=2**31 - 1)
        finally:
            store.close()
    except QuantLensError:
        return []
    referenced = [p for row in rows for p in (row.model_path, row.data_path) if p]
    return remove_stale_uploads(referenced, home=home)
