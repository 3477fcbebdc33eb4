"""Tests for load_dataset: CSV, class folders, flat folders and zips, with skips listed."""

from __future__ import annotations

import zipfile
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from core.errors import DatasetError, QuantLensError, UnsafeArchive
from core.inputs.datasets import load_dataset
from core.types import Dataset


def image(path: Path, color: tuple[int, int, int] = (10, 20, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (2, 2), color).save(path)
    return path


def write_csv(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def relpaths(ds: Dataset) -> list[str]:
    return [s.relpath for s in ds.samples]


def skipped(ds: Dataset) -> dict[str, str]:
    return {s.relpath: s.reason for s in ds.skipped}


# ------------------------------------------------------------------------------------------
# CSV


def test_csv_keeps_row_order_and_resolves_against_its_folder(tmp_path: Path) -> None:
    root = tmp_path / "set"
    for name in ("b.png", "a.png", "sub/c.png"):
        image(root / name)
    csv_path = write_csv(root / "data.csv", ["filepath,label", "b.png,1", "a.png,0", "sub/c.png,2"])
    ds = load_dataset(csv_path)
    assert ds.kind == "csv"
    assert ds.path == str(root.resolve())
    assert relpaths(ds) == ["b.png", "a.png", "sub/c.png"]
    assert [s.index for s in ds.samples] == [0, 1, 2]
    assert [s.label for s in ds.samples] == [1, 0, 2]
    assert [s.path for s in ds.samples] == [str((root / r).resolve()) for r in relpaths(ds)]
    assert ds.has_labels
    assert ds.class_names is None  # integer labels and no labels.txt: the model gives the count
    assert ds.skipped == ()


def test_csv_without_label_column_is_unlabelled(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    ds = load_dataset(write_csv(tmp_path / "d.csv", ["filepath", "a.png"]))
    assert [s.label for s in ds.samples] == [None]
    assert not ds.has_labels


def test_csv_header_is_tolerant_of_case_spaces_bom_and_extra_columns(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    path = tmp_path / "d.csv"
    path.write_bytes("\ufeffid, FilePath ,Label\n7,a.png,3\n".encode())
    ds = load_dataset(path)
    assert relpaths(ds) == ["a.png"]
    assert ds.samples[0].label == 3


def test_csv_without_filepath_column_names_its_columns(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["path,class", "a.png,0"])
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    assert str(info.value) == (
        "CSV d.csv has no filepath column (its columns: 'path', 'class'); "
        "the expected header is filepath,label"
    )


def test_semicolon_csv_shows_the_single_column_it_sees(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["filepath;label", "a.png;0"])
    with pytest.raises(DatasetError, match=r"its columns: 'filepath;label'\)"):
        load_dataset(path)


def test_empty_csv(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"")
    with pytest.raises(DatasetError) as info:
        load_dataset(path)
    assert str(info.value) == (
        "CSV d.csv is empty; write the header filepath,label and one row per image"
    )


def test_csv_with_only_a_header(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "d.csv", ["filepath,label", "", " , "])
    with pytest.raises(DatasetError, match=r"CSV d.csv is empty: it has a header but no rows"):
        load_dataset(path)


def test_csv_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"filepath,label\n\xff\xfe.png,0\n")
    with pytest.raises(DatasetError, match=r"CSV d.csv is not UTF-8 text; save it as UTF-8"):
        load_dataset(path)


def test_thirty_percent_missing_files_are_listed_and_the_rest_kept(tmp_path: Path) -> None:
    lines = ["filepath,label"]
    missing = []
    for i in range(10):
        name = f"img{i}.png"
        lines.append(f"{name},{i % 2}")
        if i % 3 == 0 and i > 0:  # 3, 6, 9
            missing.append(name)
        else:
            image(tmp_path / name)
    ds = load_dataset(write_csv(tmp_path / "d.csv", lines))
    assert len(ds.samples) == 7
    assert skipped(ds) == dict.fromkeys(missing, "file not found")
    assert relpaths(ds) == [f"img{i}.png" for i in range(10) if f"img{i}.png" not in missing]
    assert [s.index for s in ds.samples] == list(range(7))


def test_path_traversal_rows_are_listed_and_never_resolved(tmp_path: Path) -> None:
    root = tmp_path / "set"
    image(root / "ok.png")
    secret = image(tmp_path / "secret.png")  # exists: a leak would find it
    (root / "link.png").symlink_to(secret)
    (root / "inner.png").symlink_to(root / "ok.png")  # a link that stays inside is fine
    rows = [
        "../secret.png",
        str(secret),  # absolute
        "link.png",  # symlink escaping the root
        "sub/../../secret.png",
        "..\\secret.png",  # Windows separators are normalised, then refused
        "C:\\data\\secret.png",
        "sub/../ok.png",  # stays inside: kept
        "inner.png",
    ]
    ds = load_dataset(write_csv(root / "d.csv", ["filepath", *rows]))
    outside = "path outside the data set folder"
    assert skipped(ds) == {r: outside for r in rows[:6]}
    assert relpaths(ds) == ["ok.png", "inner.png"]  # tidied, so root/relpath opens the file
    assert all(Path(s.path).is_relative_to(root.resolve()) for s in ds.samples)


def test_labels_outside_the_class_list_are_listed(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    for i in range(5):
        image(tmp_path / f"{i}.png")
    rows = ["filepath,label", "0.png,3", "1.png,12", "2.png,-1", "3.png,zebra", "4.png,class7"]
    ds = load_dataset(write_csv(tmp_path / "d.csv", rows))
    assert [(s.relpath, s.label) for s in ds.samples] == [("0.png", 3), ("4.png", 7)]
    assert skipped(ds) == {
        "1.png": "label 12 is outside the 10 classes in labels.txt",
        "2.png": "label -1 is outside the 10 classes in labels.txt",
        "3.png": "label 'zebra' is not a class in labels.txt",
    }
    assert ds.class_names == tuple(f"class{i}" for i in range(10))


def test_class_names_without_labels_txt_use_sorted_unique_names(tmp_path: Path) -> None:
    for i in range(4):
        image(tmp_path / f"{i}.png")
    rows = ["filepath,label", "0.png,dog", "1.png,cat", "2.png,emu", "3.png,cat"]
    ds = load_dataset(write_csv(tmp_path / "d.csv", rows))
    assert ds.class_names == ("cat", "dog", "emu")
    assert [s.label for s in ds.samples] == [1, 0, 2, 0]


def test_class_names_with_labels_txt_use_its_order(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("dog\ncat\n")
    for i in range(2):
        image(tmp_path / f"{i}.png")
    ds = load_dataset(write_csv(tmp_path / "d.csv", ["filepath,label", "0.png,cat", "1.png,dog"]))
    assert ds.class_names == ("dog", "cat")
    assert [s.label for s in ds.samples] == [1, 0]


def test_duplicate_names_in_labels_txt_make_that_label_ambiguous(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("crane\nowl\ncrane\n")  # as ImageNet's list does
    for i in range(3):
        image(tmp_path / f"{i}.png")
    rows = ["filepath,label", "0.png,crane", "1.png,owl", "2.png,2"]
    ds = load_dataset(write_csv(tmp_path / "d.csv", rows))
    assert [(s.relpath, s.label) for s in ds.samples] == [("1.png", 1), ("2.png", 2)]
    assert skipped(ds) == {"0.png": "label 'crane' appears more than once in labels.txt"}


def test_float_looking_indices_and_negative_indices(tmp_path: Path) -> None:
    for i in range(3):
        image(tmp_path / f"{i}.png")
    rows = ["filepath,label", "0.png,3.0", "1.png,-2", "2.png,"]
    ds = load_dataset(write_csv(tmp_path / "d.csv", rows))
    assert [(s.relpath, s.label) for s in ds.samples] == [("0.png", 3), ("2.png", None)]
    assert skipped(ds) == {"1.png": "label -2 is negative; class indices start at 0"}
    assert ds.has_labels


def test_explicit_labels_file_wins_over_the_one_in_the_root(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("a\nb\n")
    other = tmp_path / "elsewhere" / "names.txt"
    other.parent.mkdir()
    other.write_text("b\na\nc\n")
    image(tmp_path / "0.png")
    csv_path = write_csv(tmp_path / "d.csv", ["filepath,label", "0.png,a", "0.png,5"])
    ds = load_dataset(csv_path, labels_file=other)
    assert ds.class_names == ("b", "a", "c")
    assert [s.label for s in ds.samples] == [1]
    assert skipped(ds) == {"0.png": "label 5 is outside the 3 classes in names.txt"}
    with pytest.raises(DatasetError, match=r"labels file .*missing.txt does not exist"):
        load_dataset(csv_path, labels_file=tmp_path / "missing.txt")


def test_bad_labels_txt(tmp_path: Path) -> None:
    image(tmp_path / "0.png")
    csv_path = write_csv(tmp_path / "d.csv", ["filepath,label", "0.png,0"])
    (tmp_path / "labels.txt").write_text("\n\n")
    with pytest.raises(DatasetError, match=r"labels file labels.txt is empty"):
        load_dataset(csv_path)
    (tmp_path / "labels.txt").write_text("a\n\nb\n")
    with pytest.raises(DatasetError, match=r"labels file labels.txt line 2 is empty"):
        load_dataset(csv_path)


def test_labels_txt_linking_out_of_the_root_is_ignored(tmp_path: Path) -> None:
    root = tmp_path / "set"
    image(root / "0.png")
    (tmp_path / "private.txt").write_text("secret-name\n")
    (root / "labels.txt").symlink_to(tmp_path / "private.txt")
    ds = load_dataset(write_csv(root / "d.csv", ["filepath,label", "0.png,0"]))
    assert ds.class_names is None


def test_windows_separators_in_csv_rows(tmp_path: Path) -> None:
    image(tmp_path / "cats" / "a.png")
    ds = load_dataset(write_csv(tmp_path / "d.csv", ["filepath,label", "cats\\a.png,0"]))
    assert relpaths(ds) == ["cats/a.png"]


def test_rows_that_are_folders_or_empty(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    image(tmp_path / "a.png")
    ds = load_dataset(
        write_csv(tmp_path / "d.csv", ["filepath,label", "folder,0", ",1", "a.png,0"])
    )
    assert skipped(ds) == {"folder": "not a file", "(row 3)": "empty filepath"}


def test_zero_usable_samples_says_how_many_and_why(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("a\nb\n")
    image(tmp_path / "x.png")
    rows = ["filepath,label", "m1.png,0", "m2.png,0", "m3.png,1", "x.png,9"]
    with pytest.raises(DatasetError) as info:
        load_dataset(write_csv(tmp_path / "d.csv", rows))
    assert str(info.value) == (
        f"no usable samples in {tmp_path.resolve()}: all 4 were skipped, most often (3) for "
        "'file not found'; fix those paths or labels"
    )


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as info:
        load_dataset(tmp_path / "nope.csv")
    assert str(info.value) == (
        f"data set {tmp_path / 'nope.csv'} does not exist; check the path or upload the files"
    )


def test_unknown_file_type(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("x")
    with pytest.raises(DatasetError, match=r"data set data.txt is not a CSV, a folder or a zip"):
        load_dataset(path)


# ------------------------------------------------------------------------------------------
# Folders


def test_class_folders_sorted_with_hidden_empty_and_nested(tmp_path: Path) -> None:
    root = tmp_path / "set"
    image(root / "dog" / "b.png")
    image(root / "dog" / "a.jpg")
    image(root / "cat" / "z.png")
    image(root / "cat" / "deeper" / "y.png")  # nested, included as Keras does
    (root / "bird").mkdir()  # empty class: keeps index 0
    image(root / ".hidden" / "h.png")  # hidden class folder: ignored
    image(root / "dog" / ".secret.png")  # hidden file: ignored
    image(root / "dog" / ".thumbs" / "t.png")  # hidden folder inside a class: ignored
    (root / "dog" / "notes.txt").write_text("not an image")
    (root / ".DS_Store").write_bytes(b"junk")
    ds = load_dataset(root)
    assert ds.kind == "folder"
    assert ds.class_names == ("bird", "cat", "dog")
    assert [(s.relpath, s.label) for s in ds.samples] == [
        ("cat/deeper/y.png", 1),
        ("cat/z.png", 1),
        ("dog/a.jpg", 2),
        ("dog/b.png", 2),
    ]
    assert [s.index for s in ds.samples] == [0, 1, 2, 3]
    assert ds.has_labels
    assert ds.skipped == ()


def test_single_class_folder(tmp_path: Path) -> None:
    image(tmp_path / "only" / "a.png")
    image(tmp_path / "only" / "b.png")
    ds = load_dataset(tmp_path)
    assert ds.class_names == ("only",)
    assert [s.label for s in ds.samples] == [0, 0]
    assert ds.has_labels


def test_all_class_folders_empty_means_no_images(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(DatasetError, match=r"^no images found in .*; put images \(.bmp .gif"):
        load_dataset(tmp_path)


def test_empty_folder_means_no_images(tmp_path: Path) -> None:
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "readme.md").write_text("hi")
    with pytest.raises(DatasetError, match=r"^no images found in"):
        load_dataset(tmp_path)


def test_class_folders_follow_labels_txt(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("dog\ncat\n")
    image(tmp_path / "cat" / "a.png")
    image(tmp_path / "dog" / "b.png")
    image(tmp_path / "emu" / "c.png")
    image(tmp_path / "1" / "d.png")  # a folder named by index
    ds = load_dataset(tmp_path)
    assert ds.class_names == ("dog", "cat")
    assert [(s.relpath, s.label) for s in ds.samples] == [
        ("1/d.png", 1),
        ("cat/a.png", 1),
        ("dog/b.png", 0),
    ]
    assert skipped(ds) == {
        "emu/c.png": "class folder 'emu': label 'emu' is not a class in labels.txt"
    }


def test_images_beside_class_folders_are_listed(tmp_path: Path) -> None:
    image(tmp_path / "cat" / "a.png")
    image(tmp_path / "stray.png")
    ds = load_dataset(tmp_path)
    assert relpaths(ds) == ["cat/a.png"]
    assert skipped(ds) == {"stray.png": "image is not inside a class folder"}


def test_symlinks_escaping_a_class_folder_are_listed(tmp_path: Path) -> None:
    root = tmp_path / "set"
    image(root / "cat" / "a.png")
    secret = image(tmp_path / "secret.png")
    (root / "cat" / "b.png").symlink_to(secret)
    (root / "cat" / "dangling.png").symlink_to(root / "cat" / "gone.png")
    ds = load_dataset(root)
    assert relpaths(ds) == ["cat/a.png"]
    assert skipped(ds) == {
        "cat/b.png": "path outside the data set folder",
        "cat/dangling.png": "file not found",
    }


def test_folder_of_images_is_unlabelled(tmp_path: Path) -> None:
    image(tmp_path / "b.png")
    image(tmp_path / "a.JPG")
    (tmp_path / "labels.txt").write_text("x\ny\n")
    ds = load_dataset(tmp_path)
    assert relpaths(ds) == ["a.JPG", "b.png"]
    assert not ds.has_labels
    assert all(s.label is None for s in ds.samples)
    assert ds.class_names == ("x", "y")  # known names still help display the predictions


def test_folder_with_one_csv_is_that_csv(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    write_csv(tmp_path / "list.csv", ["filepath,label", "a.png,0"])
    ds = load_dataset(tmp_path)
    assert ds.kind == "csv"
    assert relpaths(ds) == ["a.png"]


def test_folder_with_csv_and_an_images_subfolder_is_a_csv_data_set(tmp_path: Path) -> None:
    image(tmp_path / "images" / "a.png")
    image(tmp_path / "images" / "b.png")
    write_csv(tmp_path / "data.csv", ["filepath,label", "images/b.png,1", "images/a.png,0"])
    ds = load_dataset(tmp_path)
    assert ds.kind == "csv"
    assert [(s.relpath, s.label) for s in ds.samples] == [("images/b.png", 1), ("images/a.png", 0)]


def test_folder_with_a_csv_that_is_no_listing(tmp_path: Path) -> None:
    write_csv(tmp_path / "stats.csv", ["name,value", "x,1"])
    with pytest.raises(DatasetError, match=r"CSV stats.csv has no filepath column"):
        load_dataset(tmp_path)
    image(tmp_path / "cat" / "a.png")  # with class folders, such a CSV is just ignored
    assert relpaths(load_dataset(tmp_path)) == ["cat/a.png"]


def test_folder_with_several_csv_listings(tmp_path: Path) -> None:
    image(tmp_path / "a.png")
    write_csv(tmp_path / "train.csv", ["filepath,label", "a.png,0"])
    write_csv(tmp_path / "val.csv", ["filepath,label", "a.png,0"])
    with pytest.raises(DatasetError, match=r"several CSV listings \(train.csv, val.csv\)"):
        load_dataset(tmp_path)
    assert relpaths(load_dataset(tmp_path / "val.csv")) == ["a.png"]


# ------------------------------------------------------------------------------------------
# Allowed roots


def test_allowed_roots(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    image(allowed / "set" / "cat" / "a.png")
    image(tmp_path / "other" / "cat" / "a.png")
    assert len(load_dataset(allowed / "set", allowed_roots=[allowed]).samples) == 1
    with pytest.raises(QuantLensError, match=r"data set .*other is outside the allowed folders"):
        load_dataset(tmp_path / "other", allowed_roots=[allowed])
    # Checked before existence, so the error does not reveal which paths exist.
    with pytest.raises(QuantLensError, match=r"outside the allowed folders"):
        load_dataset(tmp_path / "does-not-exist", allowed_roots=[allowed])
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\n")
    with pytest.raises(QuantLensError, match=r"labels file .* is outside the allowed folders"):
        load_dataset(allowed / "set", labels_file=labels, allowed_roots=[allowed])


# ------------------------------------------------------------------------------------------
# Zips


def zip_folder(folder: Path, zip_path: Path, *, prefix: str = "") -> Path:
    with zipfile.ZipFile(zip_path, "w") as zf:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                zf.write(file, prefix + file.relative_to(folder).as_posix())
    return zip_path


def test_zip_of_class_folders_in_a_wrapper(tmp_path: Path) -> None:
    src = tmp_path / "src"
    image(src / "cat" / "a.png")
    image(src / "dog" / "b.png")
    (src / "labels.txt").write_text("dog\ncat\n")
    zip_path = zip_folder(src, tmp_path / "upload.zip", prefix="flowers/")
    with zipfile.ZipFile(zip_path, "a") as zf:
        zf.writestr("__MACOSX/flowers/._cat", b"junk")
    ds = load_dataset(zip_path, extract_dir=tmp_path / "run" / "data")
    dest = next((tmp_path / "run").glob("data-*"))  # named by the zip's content hash
    assert ds.path == str((dest / "flowers").resolve())
    assert ds.kind == "folder"
    assert ds.class_names == ("dog", "cat")
    assert [(s.relpath, s.label) for s in ds.samples] == [("cat/a.png", 1), ("dog/b.png", 0)]
    assert all(Path(s.path).is_file() for s in ds.samples)


def test_zip_of_a_csv_data_set(tmp_path: Path) -> None:
    src = tmp_path / "src"
    image(src / "img" / "a.png")
    write_csv(src / "data.csv", ["filepath,label", "img/a.png,0", "img/missing.png,0"])
    ds = load_dataset(zip_folder(src, tmp_path / "u.zip"), extract_dir=tmp_path / "x")
    assert ds.kind == "csv"
    assert ds.path == str(next(tmp_path.glob("x-*")).resolve())  # named by the zip's hash
    assert relpaths(ds) == ["img/a.png"]
    assert skipped(ds) == {"img/missing.png": "file not found"}


def test_zip_needs_an_extract_dir(tmp_path: Path) -> None:
    src = tmp_path / "src"
    image(src / "a.png")
    with pytest.raises(QuantLensError, match=r"a zip data set needs a folder to extract into"):
        load_dataset(zip_folder(src, tmp_path / "u.zip"))


def test_unsafe_zip_is_refused(tmp_path: Path) -> None:
    zip_path = tmp_path / "u.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("cat/a.png", b"x")
        zf.writestr(zipfile.ZipInfo("../evil.png"), b"x")
    with pytest.raises(UnsafeArchive, match=r"contains '..'"):
        load_dataset(zip_path, extract_dir=tmp_path / "x")
    assert not (tmp_path / "evil.png").exists()


def test_skip_reasons_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("a\n")
    image(tmp_path / "ok.png")
    rows = ["filepath,label", "ok.png,0", "../x.png,0", "nope.png,0", "ok.png,4", "ok.png,q"]
    ds = load_dataset(write_csv(tmp_path / "d.csv", rows))
    reasons = Counter(s.reason for s in ds.skipped)
    assert sum(reasons.values()) == 4
    assert all("\n" not in r for r in reasons)
