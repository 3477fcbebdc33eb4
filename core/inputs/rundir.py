"""Where a run's files live: the run-directory layout shared by the worker, CLI, store and dashboard.

A run directory holds everything a finished run needs to be shown again, without the model:

    job.json                 the job: model, data, preset, variants, options (written first)
    status.json              {"status": RunStatus, "pid", "started", "finished", "error"}
    progress.jsonl           one ProgressEvent per line, appended by the worker
    report.json              DESIGN §7 report; rewritten (atomically) after every variant
    samples.csv              per sample: index, relpath, label, ref_top1, ref_top1_prob, ref_margin
    skipped.csv              relpath, reason for every sample that was not evaluated
    reference.probs.npy      float32 [N, C] reference probabilities, rows in samples.csv order
    reference.latency.npy    float64 per-invoke milliseconds of the reference
    <variant>.tflite         the converted model (every <variant> file is named by the
                             variant's short file_id, not its readable name: variant_file)
    <variant>.probs.npy      float32 [N, C] dequantized TFLite probabilities
    <variant>.samples.csv    per sample: index, tfl_top1, tfl_top1_prob, agree, max_abs_delta,
                             top1_prob_delta, kl
    <variant>.latency.npy    float64 per-invoke milliseconds
    labels.txt               class names, one per line, index order (when known)
    worker.log               the worker's stderr (its tail explains crashes)
    report.html              self-contained report (written on request)
    model-<hash>/, data-<hash>/, calibration-data-<hash>/   zipped inputs, extracted
    sweep/                   the calibration sweep's models
    calibration.csv          the images int8 was calibrated on
    .<name>                  caches and temporary files (decoded images, calibration, ...)
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

JOB = "job.json"
STATUS = "status.json"
PROGRESS = "progress.jsonl"
REPORT = "report.json"
REPORT_HTML = "report.html"
SAMPLES = "samples.csv"
SKIPPED = "skipped.csv"
LABELS = "labels.txt"
WORKER_LOG = "worker.log"
REFERENCE_PROBS = "reference.probs.npy"
REFERENCE_LATENCY = "reference.latency.npy"
SUPERVISOR_LOG = "supervisor.log"
LAYERS = ".layers.csv"  # a variant's per-layer error table (core.engine.diagnose)
FLIP_HUNT = ".flip-hunt.csv"  # a variant's new flips under small perturbations (--perturb)
LAYER_DETAILS = ".layer_details.json"  # its weight ranges and histograms (layer_details)
MODEL_EXPLORER = ".model-explorer.json"  # its per-layer error for Model Explorer

CALIBRATION_LIST = "calibration.csv"  # the images int8 was calibrated on (decode stage)
CANCEL_FLAG = "cancel"  # touched by whoever cancels a run

# What a run writes besides the names above: per-variant files by their suffix, the worker's
# hidden caches (core.runfolder.protocol names them), temporary files, the sweep's folder, and zips
# extracted into `<model|data|calibration-data>-<16 hex>` folders.
VARIANT_SUFFIXES = (
    ".tflite",
    ".samples.csv",
    ".probs.npy",
    ".latency.npy",
    LAYERS,
    LAYER_DETAILS,
    MODEL_EXPLORER,
    FLIP_HUNT,
)
HIDDEN_RUN_FILES = frozenset(
    {
        ".tmp",
        ".decoded.u8",
        ".decoded.json",
        ".calibration.npy",
        ".reference.f32",
        ".converting.json",
    }
)
SWEEP_FOLDER = "sweep"
_EXTRACTED = re.compile(r"(model|data|calibration-data)-[0-9a-f]{16}")
_RUN_FILES = frozenset(
    {
        JOB,
        STATUS,
        PROGRESS,
        REPORT,
        REPORT_HTML,
        SAMPLES,
        SKIPPED,
        LABELS,
        WORKER_LOG,
        SUPERVISOR_LOG,
        REFERENCE_PROBS,
        REFERENCE_LATENCY,
        CALIBRATION_LIST,
        CANCEL_FLAG,
    }
)


class HasFileId(Protocol):
    """A variant as its files know it: a VariantSpec, a report's Variant or VariantIdentity."""

    @property
    def file_id(self) -> str: ...


@dataclass(frozen=True)
class FileId:
    """A bare file id, for a file named before file ids existed (by the variant's name)."""

    file_id: str


def entry_files(entry: Mapping[str, Any]) -> FileId:
    """What a report.json variant entry's files are named by: its `file_id`, else its name
    (reports written before file ids named the files by the name)."""
    return FileId(str(entry.get("file_id") or entry["name"]))


def variant_file(run_dir: Path, variant: HasFileId, suffix: str) -> Path:
    """The file `<file_id><suffix>` of a variant: the one way every writer and reader names a
    variant's files (DESIGN §10). Its readable name may be too long for a file name."""
    return Path(run_dir) / f"{variant.file_id}{suffix}"


def tflite_path(run_dir: Path, variant: HasFileId) -> Path:
    return variant_file(run_dir, variant, ".tflite")


def probs_path(run_dir: Path, variant: HasFileId) -> Path:
    return variant_file(run_dir, variant, ".probs.npy")


def variant_samples_path(run_dir: Path, variant: HasFileId) -> Path:
    return variant_file(run_dir, variant, ".samples.csv")


def latency_path(run_dir: Path, variant: HasFileId) -> Path:
    return variant_file(run_dir, variant, ".latency.npy")


def _written_by_a_run(entry: Path) -> bool:
    """True for what a run writes; never for a user's own `data/`, `.git` or notes."""
    name = entry.name
    if name in HIDDEN_RUN_FILES or (name.startswith(".") and ".partial-" in name):
        return True  # caches, the worker's TMPDIR, a killed extraction's staging folder
    if entry.is_dir() or entry.is_symlink():
        return not entry.is_symlink() and (
            name == SWEEP_FOLDER or _EXTRACTED.fullmatch(name) is not None
        )
    if name.startswith(".") and name.endswith(".tmp"):
        return True  # write_atomic's temporary file, left by a killed writer
    return name in _RUN_FILES or name.endswith(VARIANT_SUFFIXES)


def clear_previous_run(folder: Path) -> list[str]:
    """Remove every file an earlier run left in `folder` (a reused --out), keep anything else.

    A second run into the same folder must not show the first run's variants, samples or
    extracted data as its own. Only what a run writes goes (the names above); a folder that
    never held a run (no job.json, status.json or report.json) is left untouched.

    Returns:
        The names removed, sorted.

    Raises:
        OSError: an entry cannot be removed.
    """
    if not any((folder / n).exists() for n in (JOB, STATUS, REPORT)):
        return []
    removed = []
    for entry in sorted(folder.iterdir()):
        if not _written_by_a_run(entry):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
        removed.append(entry.name)
    return removed


def dataset_root(dataset: dict[str, Any]) -> Path | None:
    """The folder a report's sample `relpath`s are relative to.

    report.json records the data set's root folder; older or hand-made reports may name the
    CSV file itself, whose folder is then the root.
    """
    raw = dataset.get("path")
    if not raw:
        return None
    path = Path(str(raw))
    return path.parent if path.suffix.lower() == ".csv" or path.is_file() else path


def workspace_home() -> Path:
    """The workspace folder: `$QUANTLENS_HOME`, default `./workspace` (DESIGN §8)."""
    return Path(os.environ.get("QUANTLENS_HOME", "workspace")).resolve()


def runs_root(home: Path | None = None) -> Path:
    return (home or workspace_home()) / "runs"


def cache_root(home: Path | None = None) -> Path:
    return (home or workspace_home()) / "cache"


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` under a temporary name in the same folder, then rename it into place.

    A reader (or a crash) never sees a half-written file: it sees the old one or the new one.
    The file gets the mode a plain open() gives (0666 minus the umask).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new, exclusive file beside `path`, opened for writing.

    Mode 0o666 lets the kernel apply the umask, as open() does. Reading the umask would mean
    setting it (os.umask has no read-only form), and for that moment every other thread of
    the process would create its files and folders with no umask at all.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue  # another writer drew the same name: draw again


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False).encode("utf-8"))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
