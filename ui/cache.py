"""Bounded caches between the pages and core: results, thumbnails, signatures, data sets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from core.errors import QuantLensError
from core.inputs import rundir
from core.inputs.images import fit_png, thumbnail_png
from core.reporting.results import RunResults, load_results, report_mtime
from core.types import Dataset, ModelSignature, Preset

THUMB_PX = 112
LARGE_PX = 320


def run_path(run_id: str) -> Path:
    """The run directory of `run_id`: runs/<id> in the workspace, else where the store says.

    A CLI run made with `--out DIR` keeps its files in DIR; the store remembers the folder.
    """
    local = rundir.runs_root() / run_id
    if local.is_dir():
        return local
    stored = _stored_run_dir(str(rundir.workspace_home()), run_id)
    return Path(stored) if stored else local


@st.cache_data(max_entries=256, ttl=60, show_spinner=False)
def _stored_run_dir(home: str, run_id: str) -> str | None:
    from core.history.store import open_store

    try:
        store = open_store(Path(home))
    except QuantLensError:
        return None
    try:
        row = store.get_run(run_id)
    finally:
        store.close()
    return str(row.run_dir) if row is not None else None


@st.cache_resource(max_entries=4, show_spinner=False)
def _results(run_dir: str, mtime: float) -> RunResults:
    # mtime is part of the key only: a rewritten report.json yields a fresh view.
    del mtime
    return load_results(Path(run_dir))


def results(run_id: str) -> RunResults:
    """The run's results, read once per version of its report.json.

    Raises:
        QuantLensError: the run has no readable report yet.
    """
    d = run_path(run_id)
    return _results(str(d), report_mtime(d))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@st.cache_data(max_entries=1024, show_spinner=False)
def _thumbnail(path: str, mtime: float, size: int, channels: int) -> bytes | None:
    del mtime
    try:
        # The model's own decoder, so the gallery shows the pixels the model was fed.
        return thumbnail_png(path, size=size, channels=channels)
    except QuantLensError:
        return None


def thumbnail(path: Path | None, *, size: int = THUMB_PX, channels: int = 3) -> bytes | None:
    """PNG bytes of the image at `path` as the model decodes it, fitted to `size` px.

    None if the file is missing or undecodable. `channels` 1 shows what a grayscale model saw.
    """
    if path is None:
        return None
    return _thumbnail(str(path), _mtime(path), size, channels)


def array_png(arr: np.ndarray, *, size: int = THUMB_PX) -> bytes:
    """PNG bytes of a decoded uint8 HxWxC (or HxW) array fitted to `size` px."""
    return fit_png(np.asarray(arr), size)


@st.cache_data(max_entries=16, show_spinner=False)
def _signature(path: str, mtime: float, trusted: bool) -> ModelSignature:
    del mtime
    from core.jobs.launch import inspect_model

    return inspect_model(path, trusted=trusted)


def model_signature(path: str, *, trusted: bool = False) -> ModelSignature:
    """The model's signature, read in a worker subprocess once per (path, mtime, trust).

    Raises:
        QuantLensError: the model cannot be read (one-line reason).
    """
    return _signature(path, _mtime(Path(path)), trusted)


@st.cache_data(max_entries=8, show_spinner=False)
def _preset_trial(
    model: str,
    model_mtime: float,
    trusted: bool,
    data: str,
    data_mtime: float,
    labels_file: str | None,
    extract_dir: str | None,
) -> dict[str, Any]:
    del model_mtime, data_mtime
    from core.jobs.launch import preset_trial as run_trial

    samples = dataset(data, labels_file=labels_file, extract_dir=extract_dir).samples
    return run_trial(model, samples, trusted=trusted)


def preset_trial(
    model: str,
    data: str,
    *,
    labels_file: str | None = None,
    extract_dir: str | None = None,
    trusted: bool = False,
) -> dict[str, Any]:
    """The original under every preset on a few dozen images of the data set, run in a worker
    once per (model, data) as they are on disk (core.metrics.preset_check judges it).

    Raises:
        QuantLensError: the model cannot be run (one-line reason).
    """
    return _preset_trial(
        model,
        _mtime(Path(model)),
        trusted,
        data,
        _mtime(Path(data)),
        labels_file or None,
        extract_dir,
    )


@st.cache_data(max_entries=8, show_spinner=False)
def _dataset(path: str, mtime: float, labels_file: str | None, extract_dir: str | None) -> Dataset:
    del mtime
    from core.inputs.datasets import load_dataset

    return load_dataset(
        path, labels_file=labels_file, extract_dir=Path(extract_dir) if extract_dir else None
    )


def dataset(
    path: str, *, labels_file: str | None = None, extract_dir: str | None = None
) -> Dataset:
    """The enumerated data set at `path` (a zip is extracted into `extract_dir`), cached.

    Raises:
        QuantLensError: the data set cannot be read.
    """
    return _dataset(path, _mtime(Path(path)), labels_file or None, extract_dir)


@st.cache_data(max_entries=16, show_spinner=False)
def preview(
    paths: tuple[str, ...], height: int, width: int, channels: int, preset: str
) -> list[tuple[np.ndarray, float, float]]:
    """Decoded, resized images and the (min, max) of their preset output, as the model sees them.

    Raises:
        QuantLensError: an image cannot be decoded.
    """
    from core.inputs.images import decode_image
    from core.inputs.presets import apply_preset

    out: list[tuple[np.ndarray, float, float]] = []
    for p in paths:
        img = decode_image(p, height=height, width=width, channels=channels)
        x = apply_preset(img[None, ...], Preset(preset))
        out.append((np.asarray(img), float(np.min(x)), float(np.max(x))))
    return out
