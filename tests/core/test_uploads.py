"""Uploads live as long as a run needs them: kept while a stored run points at them, removed
at server start once their runs are deleted, or after a day when no run ever used them."""

from __future__ import annotations

import hashlib
import os
import time
import zipfile
from pathlib import Path

import pytest

from core.errors import QuantLensError, UnsupportedModel
from core.history import cleanup, stale_uploads
from core.history.store import open_store
from core.inputs import uploads
from core.types import JobSpec, RunStatus

HOUR = 3600.0


def _age(folder: Path, hours: float) -> None:
    """Pretend the upload was last picked `hours` ago."""
    then = time.time() - hours * HOUR
    os.utime(folder / uploads.PICKED, (then, then))


def _stored_run(home: Path, run_id: str, *, model: str, data: str) -> None:
    store = open_store(home)
    try:
        job = JobSpec(model_path=model, data_path=data, variants=("float16",))
        store.create_run(run_id, name=run_id, run_dir=home / "runs" / run_id, job=job.to_dict())
        store.set_status(run_id, RunStatus.DONE)
    finally:
        store.close()


def _delete_run(home: Path, run_id: str) -> None:
    store = open_store(home)
    try:
        cleanup.delete_run(store, run_id)
    finally:
        store.close()


def test_an_upload_is_stored_once_under_its_content_hash(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    first = uploads.save_upload(b"zip bytes", "name.zip", home=home)
    again = uploads.save_upload(b"zip bytes", "name.zip", home=home)
    digest = hashlib.sha256(b"zip bytes").hexdigest()[:16]
    assert first == again == home / "uploads" / digest / "name.zip"
    assert first.read_bytes() == b"zip bytes"
    assert uploads.upload_folder(first / "../extracted/x/saved_model", home=home) == (
        (home / "uploads" / digest).resolve()
    )
    assert uploads.upload_folder(tmp_path / "elsewhere.zip", home=home) is None


@pytest.mark.parametrize(
    "name", ["..", ".", "", "  ", "../../evil/name.zip", "a\\b.zip", "extracted", "used-by"]
)
def test_an_upload_name_that_is_not_a_file_name_is_refused_in_one_line(
    tmp_path: Path, name: str
) -> None:
    with pytest.raises(QuantLensError, match="is not a file name; rename the file") as caught:
        uploads.save_upload(b"bytes", name, home=tmp_path / "ws")
    assert "\n" not in str(caught.value)
    assert not list((tmp_path / "ws").rglob("*.zip"))


def test_stale_uploads_are_removed_and_those_runs_need_are_kept(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    used = uploads.save_upload(b"used by a stored run", "data.zip", home=home)
    orphan = uploads.save_upload(b"its run was deleted", "model.keras", home=home)
    fresh = uploads.save_upload(b"picked, not run yet", "new.zip", home=home)
    idle = uploads.save_upload(b"picked two days ago", "old.zip", home=home)
    _stored_run(home, "r-used", model=str(home / "demo" / "m.keras"), data=str(used))
    _stored_run(home, "r-gone", model=str(orphan), data=str(home / "demo" / "d.csv"))
    uploads.bind_to_run([str(used), None], "r-used", home=home)
    uploads.bind_to_run([str(orphan)], "r-gone", home=home)
    _delete_run(home, "r-gone")
    for upload in (used, orphan, idle):
        _age(upload.parent, 48)
    _age(fresh.parent, 1)

    removed = stale_uploads.clean_workspace_uploads(home=home)

    assert sorted(removed) == sorted([orphan.parent, idle.parent])
    assert used.is_file() and fresh.is_file()  # a run still points at one; one is new
    assert not orphan.parent.exists() and not idle.parent.exists()


def test_an_upload_holding_a_runs_model_folder_is_kept(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    archive = uploads.save_upload(b"a zipped SavedModel", "model.zip", home=home)
    saved_model = uploads.extracted_dir(archive) / "export" / "saved_model"
    saved_model.mkdir(parents=True)
    _stored_run(home, "r1", model=str(saved_model), data=str(home / "demo" / "d.csv"))
    _age(archive.parent, 100)
    assert stale_uploads.clean_workspace_uploads(home=home) == []
    assert (saved_model).is_dir()


def test_an_unreadable_store_removes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    idle = uploads.save_upload(b"old", "old.zip", home=home)
    _age(idle.parent, 100)
    (home / "quantlens.db").mkdir()  # a folder where the database should be: cannot open
    assert stale_uploads.clean_workspace_uploads(home=home) == []
    assert idle.is_file()


def test_an_upload_whose_run_folder_still_exists_is_kept_without_a_store_row(
    tmp_path: Path,
) -> None:
    # A database moved aside as corrupt loses its rows, not its run folders: keep the upload.
    home = tmp_path / "ws"
    upload = uploads.save_upload(b"bytes", "data.zip", home=home)
    uploads.bind_to_run([str(upload)], "r-folder", home=home)
    (home / "runs" / "r-folder").mkdir(parents=True)
    _age(upload.parent, 100)
    assert stale_uploads.clean_workspace_uploads(home=home) == []
    assert upload.is_file()


def _zip(path: Path, members: dict[str, bytes]) -> bytes:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path.read_bytes()


def test_a_zipped_saved_model_is_extracted_once_and_its_folder_is_the_model(
    tmp_path: Path,
) -> None:
    home = tmp_path / "ws"
    data = _zip(
        tmp_path / "m.zip",
        {"export/net/saved_model.pb": b"pb", "export/net/variables/variables.index": b"i"},
    )
    upload = uploads.save_upload(data, "m.zip", home=home)
    model = uploads.model_from_upload(upload)
    assert model == upload.parent / "extracted" / "export" / "net"
    assert (model / "saved_model.pb").read_bytes() == b"pb"
    (model / "marker").write_text("first extraction")
    assert uploads.model_from_upload(upload) == model  # a second pick reuses the extraction
    assert (model / "marker").read_text() == "first extraction"


def test_an_uploaded_keras_file_is_the_model_itself(tmp_path: Path) -> None:
    upload = uploads.save_upload(b"keras bytes", "net.keras", home=tmp_path / "ws")
    assert uploads.model_from_upload(upload) == upload
    assert not uploads.extracted_dir(upload).exists()


def test_a_zip_without_a_saved_model_is_one_line(tmp_path: Path) -> None:
    data = _zip(tmp_path / "m.zip", {"weights/readme.txt": b"no model here"})
    upload = uploads.save_upload(data, "m.zip", home=tmp_path / "ws")
    with pytest.raises(UnsupportedModel, match=r"^no saved_model\.pb found in extracted; zip"):
        uploads.model_from_upload(upload)


def test_only_files_in_the_upload_store_count_as_stored_uploads(tmp_path: Path) -> None:
    home = tmp_path / "ws"
    stored = uploads.save_upload(b"bytes", "d.zip", home=home)
    elsewhere = tmp_path / "d.zip"
    elsewhere.write_bytes(b"bytes")
    assert uploads.is_stored_upload(stored, home=home)
    assert uploads.is_stored_upload(str(stored), home=home)
    assert not uploads.is_stored_upload(elsewhere, home=home)
    assert not uploads.is_stored_upload(stored.parent, home=home)  # the folder is no upload
    stored.unlink()
    assert not uploads.is_stored_upload(stored, home=home)  # removed as stale
