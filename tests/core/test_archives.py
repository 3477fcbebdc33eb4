"""Tests for core.inputs.archives: unsafe zips are refused whole, and leave nothing behind."""

from __future__ import annotations

import stat
import warnings
import zipfile
from pathlib import Path

import pytest

from core.errors import QuantLensError, UnsafeArchive, UnsupportedModel
from core.inputs.archives import find_saved_model_dir, safe_extract

Member = tuple[str | zipfile.ZipInfo, bytes]


def make_zip(path: Path, members: list[Member], *, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    """Write members exactly as named (ZipInfo keeps `..`, `/` and backslashes as given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name" is what we want here
        with zipfile.ZipFile(path, "w", compression=compression) as zf:
            for name, data in members:
                info = name if isinstance(name, zipfile.ZipInfo) else zipfile.ZipInfo(name)
                info.compress_type = compression
                zf.writestr(info, data)
    return path


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Path]:
    """(zip path, dest): the zip sits in in/, dest is out/x; nothing else exists."""
    return tmp_path / "in" / "upload.zip", tmp_path / "out" / "x"


def assert_refused_cleanly(tmp_path: Path, zip_path: Path, dest: Path) -> None:
    """Nothing was written anywhere but the zip itself; dest holds no partial files."""
    assert not dest.exists() or not any(dest.iterdir())
    written = files_under(tmp_path) - {"in", "in/upload.zip", "out"}
    if dest.exists():
        written.discard("out/x")
    assert written == set()


def test_plain_zip_is_extracted(sandbox: tuple[Path, Path]) -> None:
    zip_path, dest = sandbox
    make_zip(zip_path, [("data/", b""), ("data/cats/a.jpg", b"A" * 100), ("top.txt", b"hi")])
    assert safe_extract(zip_path, dest) == dest
    assert files_under(dest) == {"data", "data/cats", "data/cats/a.jpg", "top.txt"}
    assert (dest / "data" / "cats" / "a.jpg").read_bytes() == b"A" * 100
    assert (dest / "top.txt").read_bytes() == b"hi"


def test_existing_empty_dest_is_used(sandbox: tuple[Path, Path]) -> None:
    zip_path, dest = sandbox
    make_zip(zip_path, [("a.txt", b"a")])
    dest.mkdir(parents=True)
    safe_extract(zip_path, dest)
    assert (dest / "a.txt").read_bytes() == b"a"


def test_non_empty_dest_is_refused(sandbox: tuple[Path, Path]) -> None:
    zip_path, dest = sandbox
    make_zip(zip_path, [("a.txt", b"a")])
    dest.mkdir(parents=True)
    (dest / "keep.txt").write_text("keep")
    with pytest.raises(
        QuantLensError, match=r"is not an empty folder; extract into a fresh folder"
    ):
        safe_extract(zip_path, dest)
    assert files_under(dest) == {"keep.txt"}


def test_windows_backslash_names_become_folders(sandbox: tuple[Path, Path]) -> None:
    zip_path, dest = sandbox
    make_zip(zip_path, [("cats\\a.jpg", b"a")])
    safe_extract(zip_path, dest)
    assert (dest / "cats" / "a.jpg").read_bytes() == b"a"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../evil.txt", "member '../evil.txt' contains '..'"),
        ("data/../../evil.txt", "member 'data/../../evil.txt' contains '..'"),
        ("..\\evil.txt", "member '..\\\\evil.txt' contains '..'"),
        ("/tmp/evil.txt", "member '/tmp/evil.txt' is an absolute path"),
        ("\\evil.txt", "is an absolute path"),
        ("C:/evil.txt", "member 'C:/evil.txt' is an absolute path"),
        ("C:\\Windows\\evil.txt", "is an absolute path"),
    ],
)
def test_traversal_and_absolute_members_refuse_the_whole_archive(
    tmp_path: Path, sandbox: tuple[Path, Path], name: str, expected: str
) -> None:
    zip_path, dest = sandbox
    # A harmless member first: it must not be written either (checks come before any write).
    make_zip(zip_path, [("ok.txt", b"fine"), (name, b"evil")])
    with pytest.raises(UnsafeArchive) as info:
        safe_extract(zip_path, dest)
    assert expected in str(info.value)
    assert str(info.value).startswith("zip upload.zip member")
    assert_refused_cleanly(tmp_path, zip_path, dest)


def test_symlink_member_is_refused(tmp_path: Path, sandbox: tuple[Path, Path]) -> None:
    zip_path, dest = sandbox
    link = zipfile.ZipInfo("data/passwd.jpg")
    link.create_system = 3  # Unix
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    make_zip(zip_path, [("data/a.jpg", b"a"), (link, b"/etc/passwd")])
    with pytest.raises(UnsafeArchive, match=r"member 'data/passwd.jpg' is a symbolic link"):
        safe_extract(zip_path, dest)
    assert_refused_cleanly(tmp_path, zip_path, dest)


def test_duplicate_member_is_refused(tmp_path: Path, sandbox: tuple[Path, Path]) -> None:
    zip_path, dest = sandbox
    make_zip(zip_path, [("a.jpg", b"first"), ("b.jpg", b"b"), ("a.jpg", b"second")])
    with pytest.raises(UnsafeArchive, match=r"member 'a.jpg' appears twice"):
        safe_extract(zip_path, dest)
    assert_refused_cleanly(tmp_path, zip_path, dest)


def test_same_path_with_different_separators_is_a_duplicate(
    tmp_path: Path, sandbox: tuple[Path, Path]
) -> None:
    zip_path, dest = sandbox
    make_zip(zip_path, [("cats/a.jpg", b"1"), ("cats\\a.jpg", b"2")])
    with pytest.raises(UnsafeArchive, match=r"appears twice"):
        safe_extract(zip_path, dest)
    assert_refused_cleanly(tmp_path, zip_path, dest)


def test_file_and_folder_with_the_same_name_is_refused(
    tmp_path: Path, sandbox: tuple[Path, Path]
) -> None:
    zip_path, dest = sandbox
    make_zip(zip_path, [("a", b"file"), ("a/b.jpg", b"inside")])
    with pytest.raises(UnsafeArchive, match=r"member 'a' is both a file and a folder"):
        safe_extract(zip_path, dest)
    assert_refused_cleanly(tmp_path, zip_path, dest)


def test_encrypted_member_is_refused(tmp_path: Path, sandbox: tuple[Path, Path]) -> None:
    zip_path, dest = sandbox
    make_zip(zip_path, [("plain.txt", b"plain"), ("secret.txt", b"secret")])
    # zipfile cannot write encrypted members; set the flag bit in the central directory entry.
    raw = bytearray(zip_path.read_bytes())
    entry = raw.rindex(b"PK\x01\x02")  # the last central directory entry: secret.txt
    flags = int.from_bytes(raw[entry + 8 : entry + 10], "little") | 0x1
    raw[entry + 8 : entry + 10] = flags.to_bytes(2, "little")
    zip_path.write_bytes(bytes(raw))
    with pytest.raises(UnsafeArchive, match=r"member 'secret.txt' is encrypted"):
        safe_extract(zip_path, dest)
    assert_refused_cleanly(tmp_path, zip_path, dest)


def test_nul_byte_in_member_name_is_refused(tmp_path: Path, sandbox: tuple[Path, Path]) -> None:
    zip_path, dest = sandbox
    make_zip(zip_path, [("okQ../../evil.txt", b"x")])
    raw = zip_path.read_bytes().replace(b"okQ", b"ok\x00")
    zip_path.write_bytes(raw)
    with pytest.raises(UnsafeArchive, match=r"has a NUL byte in its name"):
        safe_extract(zip_path, dest)
    assert_refused_cleanly(tmp_path, zip_path, dest)


def test_ratio_bomb_is_refused(tmp_path: Path, sandbox: tuple[Path, Path]) -> None:
    zip_path, dest = sandbox
    make_zip(zip_path, [("a.txt", b"ok"), ("zeros.bin", bytes(8 * 2**20))])
    expands = zipfile.ZipFile(zip_path).getinfo("zeros.bin")
    ratio = expands.file_size / expands.compress_size
    assert ratio > 200  # the fixture really is a bomb by the default limit
    with pytest.raises(UnsafeArchive) as info:
        safe_extract(zip_path, dest)
    assert str(info.value) == (
        f"zip upload.zip member 'zeros.bin' expands {ratio:.0f} times, above the limit of 200; "
        "it looks like a zip bomb"
    )
    assert_refused_cleanly(tmp_path, zip_path, dest)


def test_small_compressible_text_is_not_a_bomb(sandbox: tuple[Path, Path]) -> None:
    zip_path, dest = sandbox
    text = b"filepath,label\n" + b"cats/000.jpg,0\n" * 20_000  # ~300 KB, compresses > 200:1
    make_zip(zip_path, [("data.csv", text)])
    info = zipfile.ZipFile(zip_path).getinfo("data.csv")
    assert info.file_size / info.compress_size > 200
    safe_extract(zip_path, dest)
    assert (dest / "data.csv").read_bytes() == text


def test_total_size_limit(tmp_path: Path, sandbox: tuple[Path, Path]) -> None:
    zip_path, dest = sandbox
    make_zip(zip_path, [(f"f{i}.bin", bytes(1000)) for i in range(5)])
    with pytest.raises(UnsafeArchive, match=r"expands to .* above the limit of"):
        safe_extract(zip_path, dest, max_total_bytes=4000)
    assert_refused_cleanly(tmp_path, zip_path, dest)
    safe_extract(zip_path, dest, max_total_bytes=5000)  # exactly at the limit is fine
    assert len(files_under(dest)) == 5


def test_member_count_bomb_is_refused(tmp_path: Path, sandbox: tuple[Path, Path]) -> None:
    zip_path, dest = sandbox
    make_zip(zip_path, [(f"f{i}", b"") for i in range(20_001)], compression=zipfile.ZIP_STORED)
    with pytest.raises(UnsafeArchive) as info:
        safe_extract(zip_path, dest)  # the default limit is 20 000 members
    assert str(info.value) == (
        "zip upload.zip has 20001 members, above the limit of 20000; split it or zip fewer files"
    )
    assert_refused_cleanly(tmp_path, zip_path, dest)


def test_header_that_understates_the_size_is_not_trusted(
    tmp_path: Path, sandbox: tuple[Path, Path]
) -> None:
    zip_path, dest = sandbox
    make_zip(zip_path, [("a.txt", b"ok"), ("zeros.bin", bytes(4 * 2**20))])
    # Make the central directory claim zeros.bin is 1000 bytes: small enough to pass the
    # header checks. The bytes that really come out must not be taken on trust.
    raw = bytearray(zip_path.read_bytes())
    entry = raw.rindex(b"PK\x01\x02")
    raw[entry + 24 : entry + 28] = (1000).to_bytes(4, "little")
    zip_path.write_bytes(bytes(raw))
    assert zipfile.ZipFile(zip_path).getinfo("zeros.bin").file_size == 1000
    with pytest.raises(UnsafeArchive):
        safe_extract(zip_path, dest)
    assert_refused_cleanly(tmp_path, zip_path, dest)


def test_truncated_zip_is_refused(tmp_path: Path, sandbox: tuple[Path, Path]) -> None:
    zip_path, dest = sandbox
    make_zip(zip_path, [("a.jpg", b"a" * 5000), ("b.jpg", b"b" * 5000)])
    zip_path.write_bytes(zip_path.read_bytes()[:-40])
    with pytest.raises(UnsafeArchive) as info:
        safe_extract(zip_path, dest)
    assert str(info.value) == (
        "upload.zip is not a valid zip file (truncated or corrupt); re-create it"
    )
    assert_refused_cleanly(tmp_path, zip_path, dest)


def test_corrupt_member_removes_what_was_already_written(
    tmp_path: Path, sandbox: tuple[Path, Path]
) -> None:
    zip_path, dest = sandbox
    make_zip(
        zip_path,
        [("good/a.txt", b"GOOD" * 100), ("bad.txt", b"MARKER" + b"z" * 100)],
        compression=zipfile.ZIP_STORED,
    )
    # Corrupt bad.txt's stored bytes: its CRC check fails after good/a.txt was written.
    zip_path.write_bytes(zip_path.read_bytes().replace(b"MARKER", b"MARKED"))
    with pytest.raises(UnsafeArchive, match=r"not a valid zip file"):
        safe_extract(zip_path, dest)
    assert_refused_cleanly(tmp_path, zip_path, dest)


def test_corrupt_member_into_existing_dest_leaves_it_empty(
    tmp_path: Path, sandbox: tuple[Path, Path]
) -> None:
    zip_path, dest = sandbox
    dest.mkdir(parents=True)
    make_zip(
        zip_path,
        [("good/a.txt", b"GOOD"), ("bad.txt", b"MARKER")],
        compression=zipfile.ZIP_STORED,
    )
    zip_path.write_bytes(zip_path.read_bytes().replace(b"MARKER", b"MARKED"))
    with pytest.raises(UnsafeArchive):
        safe_extract(zip_path, dest)
    assert dest.is_dir()
    assert list(dest.iterdir()) == []


def test_not_a_zip_and_missing_zip(tmp_path: Path, sandbox: tuple[Path, Path]) -> None:
    zip_path, dest = sandbox
    zip_path.parent.mkdir(parents=True)
    zip_path.write_text("this is not a zip")
    with pytest.raises(UnsafeArchive, match=r"is not a valid zip file"):
        safe_extract(zip_path, dest)
    assert_refused_cleanly(tmp_path, zip_path, dest)
    with pytest.raises(QuantLensError, match=r"does not exist"):
        safe_extract(tmp_path / "nope.zip", dest)


def test_macos_junk_is_skipped(sandbox: tuple[Path, Path]) -> None:
    zip_path, dest = sandbox
    make_zip(
        zip_path,
        [
            ("data/cats/a.jpg", b"a"),
            ("data/.DS_Store", b"junk"),
            ("__MACOSX/", b""),
            ("__MACOSX/data/", b""),
            ("__MACOSX/data/cats/._a.jpg", b"resource fork"),
        ],
    )
    safe_extract(zip_path, dest)
    assert files_under(dest) == {"data", "data/cats", "data/cats/a.jpg"}


def test_saved_model_in_a_wrapper_folder_is_found(sandbox: tuple[Path, Path]) -> None:
    zip_path, dest = sandbox
    make_zip(
        zip_path,
        [
            ("my_model/saved_model.pb", b"pb"),
            ("my_model/variables/variables.index", b"idx"),
            ("my_model/fingerprint.pb", b"fp"),
            ("__MACOSX/my_model/._saved_model.pb", b"junk"),
        ],
    )
    safe_extract(zip_path, dest)
    assert find_saved_model_dir(dest) == dest / "my_model"


def test_saved_model_at_the_root_is_found(tmp_path: Path) -> None:
    (tmp_path / "saved_model.pb").write_bytes(b"pb")
    assert find_saved_model_dir(tmp_path) == tmp_path


def test_no_saved_model_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.keras").write_bytes(b"k")
    with pytest.raises(UnsupportedModel, match=r"no saved_model.pb found in"):
        find_saved_model_dir(tmp_path)


def test_several_saved_models_are_listed(tmp_path: Path) -> None:
    for name in ("b", "a/v1"):
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "saved_model.pb").write_bytes(b"pb")
    with pytest.raises(UnsupportedModel) as info:
        find_saved_model_dir(tmp_path)
    assert f"{tmp_path.name} holds several SavedModels (a/v1, b); upload one at a time" == str(
        info.value
    )
