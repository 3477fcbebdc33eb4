"""Files uploaded through Setup: stored once by content hash, bound to the runs that used them.

Layout, in the workspace:

    uploads/<sha256[:16]>/<file name>    the uploaded bytes
    uploads/<sha256[:16]>/extracted/     a zip's contents (the Setup preview, a zipped model)
    uploads/<sha256[:16]>/.picked        touched whenever Setup is given this file
    uploads/<sha256[:16]>/used-by/<id>   one empty file per run launched with it

How long an upload is kept is the run history's decision (core.history.stale_uploads), since it
depends on which runs still exist.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from core.errors import QuantLensError
from core.inputs.rundir import workspace_home

UPLOADS = "uploads"
EXTRACTED = "extracted"
PICKED = ".picked"
USED_BY = "used-by"


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
