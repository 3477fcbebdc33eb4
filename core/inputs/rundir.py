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
    <variant>.tflite         the converted model
    <variant>.probs.npy      float32 [N, C] dequantized TFLite probabilities
    <variant>.samples.csv    per sample: index, tfl_top1, tfl_top1_prob, agree, max_abs_delta,
                             top1_prob_delta, kl
    <variant>.latency.npy    float64 per-invoke milliseconds
    labels.txt               class names, one per line, index order (when known)
    worker.log               the worker's stderr (its tail explains crashes)
    report.html              self-contained report (written on request)
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

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


def tflite_path(run_dir: Path, variant: str) -> Path:
    return run_dir / f"{variant}.tflite"


def probs_path(run_dir: Path, variant: str) -> Path:
    return run_dir / f"{variant}.probs.npy"


def variant_samples_path(run_dir: Path, variant: str) -> Path:
    return run_dir / f"{variant}.samples.csv"


def latency_path(run_dir: Path, variant: str) -> Path:
    return run_dir / f"{variant}.latency.npy"


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
