"""Keep user-supplied paths inside their root: data set rows and server paths."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from core.errors import QuantLensError

ALLOWED_ROOTS_ENV = "QUANTLENS_ALLOWED_ROOTS"

# "C:foo", "C:\foo", "C:/foo": a Windows drive makes a path absolute wherever it is opened.
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def is_absolute_anywhere(relpath: str) -> bool:
    """True when `relpath` is absolute on POSIX or Windows (leading `/`, `\\`, or a drive)."""
    return relpath.startswith(("/", "\\")) or bool(_WINDOWS_DRIVE.match(relpath))


def resolve_inside(root: Path, relpath: str) -> Path | None:
    """Resolve `relpath` against `root`, following symlinks, and keep it only if it stays inside.

    Args:
        root: the folder the path must stay in (it is resolved too, so a symlinked root is fine).
        relpath: a relative path as a user wrote it (CSV cell, archive member).

    Returns:
        The resolved absolute path, or None when `relpath` is absolute (POSIX or Windows style),
        holds a NUL byte, or resolves outside `root` (`..`, a symlink that escapes). The path
        does not have to exist.
    """
    if "\0" in relpath or is_absolute_anywhere(relpath):
        return None
    real_root = Path(root).resolve()
    try:
        candidate = (real_root / relpath).resolve()
    except (OSError, RuntimeError, ValueError):
        # RuntimeError: a symlink loop on older Pythons; ValueError: unusual characters.
        return None
    if candidate == real_root or candidate.is_relative_to(real_root):
        return candidate
    return None


def allowed_roots_from_env() -> list[Path] | None:
    """The folders named in `$QUANTLENS_ALLOWED_ROOTS` (os.pathsep-separated), resolved.

    Returns:
        None when the variable is unset or blank (no restriction), else the list of folders.
    """
    raw = os.environ.get(ALLOWED_ROOTS_ENV, "")
    parts = [part.strip() for part in raw.split(os.pathsep)]
    roots = [Path(part).expanduser().resolve() for part in parts if part]
    return roots or None


def allowed_roots() -> list[Path] | None:
    """The folders users may read on this server: `$QUANTLENS_ALLOWED_ROOTS` plus the workspace.

    The workspace is always allowed once roots are set: the demo and every upload live there,
    and refusing them would break the default run and every upload on a locked-down server.

    Returns:
        None when `$QUANTLENS_ALLOWED_ROOTS` is unset or blank (no restriction).
    """
    from core.inputs.rundir import workspace_home

    roots = allowed_roots_from_env()
    if roots is None:
        return None
    home = workspace_home()
    return roots if home in roots else [*roots, home]


def require_under_roots(path: Path | str, roots: Sequence[Path] | None, *, what: str) -> Path:
    """Resolve `path` and check that it lies under one of `roots`.

    Args:
        path: a server path a user typed (model or data set).
        roots: allowed folders; None means no restriction. An empty sequence allows nothing.
        what: how to name the path in the error, e.g. "data set" or "model".

    Returns:
        The resolved absolute path (symlinks followed, so a link cannot smuggle a path out).

    Raises:
        QuantLensError: `roots` is given and the resolved path is under none of them.
    """
    resolved = Path(path).expanduser().resolve()
    if roots is None:
        return resolved
    real_roots = [Path(r).expanduser().resolve() for r in roots]
    if any(resolved == r or resolved.is_relative_to(r) for r in real_roots):
        return resolved
    listed = ", ".join(str(r) for r in real_roots) or "none"
    raise QuantLensError(
        f"{what} {path} is outside the allowed folders ({listed}); "
        f"set {ALLOWED_ROOTS_ENV} or copy it there"
    )


def existing_under_roots(path: Path | str, roots: Sequence[Path] | None, *, what: str) -> Path:
    """`require_under_roots`, and the path must exist: a typed server path checked before use.

    Raises:
        QuantLensError: the path is outside `roots`, or does not exist.
    """
    resolved = require_under_roots(path, roots, what=what)
    if not resolved.exists():
        raise QuantLensError(f"{what} path {path} does not exist; check the path")
    return resolved
