"""The conversion cache is capped: a hit touches its file, a write evicts the least recently used
files beyond the cap, and `python -m core clean [--cache]` frees space and says how much."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.errors import QuantLensError
from core.inputs import convcache
from tests.core.test_cli import run_cli

SIZE = 1000


def _files(folder: Path, names: list[str]) -> list[Path]:
    """Cached models of SIZE bytes each, last used in the order given (mtimes set explicitly,
    an hour apart, so the order never depends on the clock's resolution)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        path = folder / f"{name}.tflite"
        path.write_bytes(bytes([i]) * SIZE)
        stamp = 1_700_000_000 + 3600 * i
        os.utime(path, (stamp, stamp))
        paths.append(path)
    return paths


def _left(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.tflite"))


def test_a_write_evicts_the_least_recently_used_beyond_the_cap(tmp_path: Path) -> None:
    a, _b, _c, _d = _files(tmp_path, ["a", "b", "c", "d"])  # a oldest ... d newest
    assert convcache.read_cached(a) == bytes([0]) * SIZE  # a hit: a is now the newest
    convcache.write_cached(tmp_path / "e.tflite", b"e" * SIZE, cap=3 * SIZE)
    # 5,000 bytes against a 3,000 cap: the two least recently used go, b then c.
    assert _left(tmp_path) == ["a", "d", "e"]
    assert convcache.read_cached(tmp_path / "b.tflite") is None  # a miss, not an error
    # Files that are not cached models are never touched.
    (tmp_path / "notes.txt").write_text("keep")
    convcache.write_cached(tmp_path / "f.tflite", b"f" * SIZE, cap=SIZE)
    assert _left(tmp_path) == ["f"] and (tmp_path / "notes.txt").is_file()


def test_the_cap_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(convcache.CAP_ENV, raising=False)
    assert convcache.cap_bytes() == 2 * 2**30
    monkeypatch.setenv(convcache.CAP_ENV, "5000")
    assert convcache.cap_bytes() == 5000
    monkeypatch.setenv(convcache.CAP_ENV, "2GB")
    with pytest.raises(QuantLensError, match=r"^QUANTLENS_CACHE_MAX_BYTES must be a whole"):
        convcache.cap_bytes()


def test_clean_trims_to_the_cap_then_empties_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(convcache.CACHE_ENV, raising=False)  # the workspace's own cache
    folder = tmp_path / "cache" / "tflite"
    _files(folder, ["a", "b", "c", "d", "e"])
    trimmed = run_cli("clean", home=tmp_path, env={convcache.CAP_ENV: str(2 * SIZE)})
    assert trimmed.returncode == 0, trimmed.stderr
    assert _left(folder) == ["d", "e"]  # the three least recently used went
    assert trimmed.stdout.strip() == (
        f"freed 3.0 kB: 3 cached models from {folder}; 2 cached models (2.0 kB) kept"
    )
    emptied = run_cli("clean", "--cache", home=tmp_path)
    assert emptied.returncode == 0, emptied.stderr
    assert _left(folder) == []
    assert emptied.stdout.strip().startswith(f"freed 2.0 kB: 2 cached models from {folder}")
    again = run_cli("clean", "--cache", home=tmp_path)
    assert again.stdout.strip() == f"nothing to free in {folder}: 0 cached models (0 bytes) kept"


@pytest.mark.slow
def test_real_conversions_evict_the_least_recently_used_model(
    tiny_models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Converted by TensorFlow: float32 is made, then taken from the cache (touched), then
    float16 is made under a cap that holds one float32 and one float16 model but not dynamic
    as well: dynamic, least recently used, is the one evicted."""
    from core.engine.convert import tflite_from_converter
    from core.engine.models import load_reference
    from core.types import VariantSpec

    model = load_reference(tiny_models["saved_model"])
    cache = tmp_path / "cache"

    def convert(mode: str) -> tuple[bool, set[Path]]:
        """(taken from the cache, the cache files this conversion added)."""
        before = set(cache.glob("*.tflite"))
        result = tflite_from_converter(
            model, VariantSpec.parse(mode), model_sha256="c" * 64, cache_dir=cache
        )
        return result.cached, set(cache.glob("*.tflite")) - before

    cached, (float32,) = convert("float32")
    assert cached is False
    _, (dynamic,) = convert("dynamic")
    old = 1_700_000_000
    os.utime(float32, (old, old))  # both made "long ago", dynamic last
    os.utime(dynamic, (old + 1, old + 1))
    assert convert("float32") == (True, set())  # a hit: float32 is used now
    assert float32.stat().st_mtime > old + 1
    float16_size = len(
        tflite_from_converter(model, VariantSpec.parse("float16"), model_sha256="c" * 64).tflite
    )
    # Room for float32 and float16, not for dynamic as well.
    monkeypatch.setenv(convcache.CAP_ENV, str(float32.stat().st_size + float16_size))
    cached, (float16,) = convert("float16")
    assert cached is False
    assert sorted(cache.glob("*.tflite")) == sorted([float32, float16])
    assert not dynamic.exists()
