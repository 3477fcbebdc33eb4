"""Tests for core.inputs.paths: user paths stay inside their root, server paths inside allowed roots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.errors import QuantLensError
from core.inputs.paths import (
    allowed_roots_from_env,
    existing_under_roots,
    require_under_roots,
    resolve_inside,
)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A data root with one image and a sub-folder, and a secret file next to (outside) it."""
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "a.jpg").write_bytes(b"x")
    (root / "sub" / "b.jpg").write_bytes(b"y")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    return root, outside


def test_relative_path_inside_resolves_to_the_file(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    assert resolve_inside(root, "sub/b.jpg") == (root / "sub" / "b.jpg").resolve()
    # ".." that stays inside is harmless and resolves normally.
    assert resolve_inside(root, "sub/../a.jpg") == (root / "a.jpg").resolve()
    # The path does not have to exist (the caller reports "file not found" separately).
    assert resolve_inside(root, "missing.jpg") == (root / "missing.jpg").resolve()


@pytest.mark.parametrize(
    "relpath",
    ["../secret.txt", "sub/../../secret.txt", "..", "../data/../secret.txt"],
)
def test_dotdot_escape_is_refused(tree: tuple[Path, Path], relpath: str) -> None:
    root, _ = tree
    assert resolve_inside(root, relpath) is None


def test_absolute_paths_are_refused_even_when_they_point_inside(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    assert resolve_inside(root, str(outside)) is None
    assert resolve_inside(root, str(root / "a.jpg")) is None


@pytest.mark.parametrize("relpath", ["C:\\Windows\\win.ini", "c:/x.jpg", "\\\\server\\share\\x"])
def test_windows_absolute_paths_are_refused(tree: tuple[Path, Path], relpath: str) -> None:
    root, _ = tree
    assert resolve_inside(root, relpath) is None


def test_nul_byte_is_refused(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    assert resolve_inside(root, "a.jpg\0../../secret.txt") is None


def test_symlink_escaping_the_root_is_refused(tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "link.jpg").symlink_to(outside)
    (root / "linkdir").symlink_to(outside.parent)
    assert resolve_inside(root, "link.jpg") is None
    assert resolve_inside(root, "linkdir/secret.txt") is None


def test_symlink_staying_inside_is_followed(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    (root / "alias.jpg").symlink_to(root / "sub" / "b.jpg")
    assert resolve_inside(root, "alias.jpg") == (root / "sub" / "b.jpg").resolve()


def test_symlinked_root_works(tree: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = tree
    alias = tmp_path / "alias_root"
    alias.symlink_to(root)
    assert resolve_inside(alias, "a.jpg") == (root / "a.jpg").resolve()
    assert resolve_inside(alias, "../secret.txt") is None


def test_require_under_roots_without_roots_only_resolves(tmp_path: Path) -> None:
    target = tmp_path / "x" / ".." / "model"
    assert require_under_roots(target, None, what="model") == (tmp_path / "model").resolve()


def test_require_under_roots_accepts_a_path_inside(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "m").mkdir(parents=True)
    assert require_under_roots(allowed / "m", [allowed], what="model") == (allowed / "m").resolve()
    assert require_under_roots(allowed, [allowed], what="model") == allowed.resolve()


def test_require_under_roots_refuses_a_path_outside(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    other = tmp_path / "allowed_not" / "data.csv"  # a name prefix is not containment
    with pytest.raises(QuantLensError) as info:
        require_under_roots(other, [allowed], what="data set")
    assert str(info.value) == (
        f"data set {other} is outside the allowed folders ({allowed.resolve()}); "
        "set QUANTLENS_ALLOWED_ROOTS or copy it there"
    )


def test_require_under_roots_follows_links_out_of_the_allowed_folder(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (tmp_path / "private").mkdir()
    (allowed / "escape").symlink_to(tmp_path / "private")
    with pytest.raises(QuantLensError, match=r"outside the allowed folders"):
        require_under_roots(allowed / "escape", [allowed], what="model")


def test_require_under_roots_with_empty_list_allows_nothing(tmp_path: Path) -> None:
    with pytest.raises(QuantLensError, match=r"outside the allowed folders \(none\)"):
        require_under_roots(tmp_path, [], what="model")


def test_allowed_roots_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("QUANTLENS_ALLOWED_ROOTS", raising=False)
    assert allowed_roots_from_env() is None
    monkeypatch.setenv("QUANTLENS_ALLOWED_ROOTS", "  ")
    assert allowed_roots_from_env() is None
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv("QUANTLENS_ALLOWED_ROOTS", f"{a}{os.pathsep}{os.pathsep} {b} ")
    assert allowed_roots_from_env() == [a.resolve(), b.resolve()]


def test_existing_under_roots_needs_the_path_to_exist(tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "val").mkdir(parents=True)
    assert existing_under_roots(allowed / "val", [allowed], what="data set") == allowed / "val"
    missing = allowed / "val.csv"
    with pytest.raises(QuantLensError) as info:
        existing_under_roots(str(missing), None, what="data set")
    assert str(info.value) == f"data set path {missing} does not exist; check the path"
    with pytest.raises(QuantLensError, match="is outside the allowed folders"):
        existing_under_roots(tmp_path / "elsewhere", [allowed], what="model")
