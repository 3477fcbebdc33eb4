"""requirements.lock, which `make install` uses, pins exactly what the requirements files pin."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("requirements.txt", "requirements-extras.txt", "requirements-dev.txt")
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;]+)\s*(?:;\s*(.*))?$")


def pins(path: Path) -> dict[tuple[str, str], str]:
    """(normalised name, marker) -> version for every `name==version` line of a requirements file."""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line.strip())
        if match:
            name = re.sub(r"[-_.]+", "-", match.group(1)).lower()
            marker = re.sub(r"\s|['\"]", "", match.group(3) or "")
            found[(name, marker)] = match.group(2)
    return found


def test_every_pinned_requirement_is_locked_at_its_version() -> None:
    locked = {name: version for (name, _), version in pins(ROOT / "requirements.lock").items()}
    stale = []
    for source in SOURCES:
        for (name, _), version in pins(ROOT / source).items():
            if locked.get(name) != version:
                stale.append(f"{name}=={version} ({source}) is {locked.get(name)} in the lock")
    assert not stale, "run `make lock`: " + "; ".join(stale)


def test_make_install_installs_from_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "-r requirements.lock" in makefile
    assert "-r requirements.txt" not in makefile
