"""Read a model's signature, or try it under every preset, in a worker process, so the caller
never loads TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core import errors
from core.errors import QuantLensError, UnsupportedModel
from core.inputs import rundir
from core.jobs.crash import describe_exit
from core.jobs.workspace import SOURCE_ROOT
from core.runfolder import protocol
from core.types import ModelSignature, Sample


def inspect_model(
    path: str,
    *,
    timeout_s: float = 120,
    trusted: bool = False,
    input_size: tuple[int, int] | None = None,
    signature_key: str | None = None,
) -> ModelSignature:
    """Read a model's signature in a worker process (the caller never loads TensorFlow).

    An answer is remembered on disk (protocol.signature_cache_file) until the model changes.

    Raises:
        QuantLensError subclasses with the worker's one-line message; UnsupportedModel when the
        worker crashes or times out on the model.
    """
    cached = protocol.signature_cache_file(
        path, trusted=trusted, input_size=input_size, signature_key=signature_key
    )
    if cached is not None and cached.is_file():
        try:
            return _signature_from_json(json.loads(cached.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            pass  # a damaged cache entry is read again from the model
    done = _run_inspect_worker(
        path,
        timeout_s=timeout_s,
        trusted=trusted,
        input_size=input_size,
        signature_key=signature_key,
    )
    signature = _answer(done.stdout.decode("utf-8", "replace"), "signature")
    if signature is not None:
        if cached is not None:
            rundir.write_json_atomic(cached, signature)
        return _signature_from_json(signature)
    _, reason = describe_exit(
        done.returncode,
        step="load",
        timed_out=False,
        limit_gb=protocol.DEFAULT_MEMORY_LIMIT_GB,
        stderr_tail=done.stderr.decode("utf-8", "replace"),
    )
    raise UnsupportedModel(f"the model could not be read: {reason}")


def preset_trial(
    path: str,
    samples: Sequence[Sample],
    *,
    trusted: bool = False,
    timeout_s: float = 180,
) -> dict[str, Any]:
    """The original under every preprocessing preset on a few dozen of `samples`, run in a
    worker process (core.engine.preset_trial); core.metrics.preset_check judges it.

    Raises:
        QuantLensError subclasses with the worker's one-line message; UnsupportedModel when the
        worker crashes or times out.
    """
    from core.metrics.preset_check import check_indices

    chosen = [samples[i] for i in check_indices(len(samples))]
    with tempfile.TemporaryDirectory(prefix="quantlens-presets-") as folder:
        listing = Path(folder) / "samples.json"
        listing.write_text(
            json.dumps([{"path": s.path, "relpath": s.relpath, "label": s.label} for s in chosen]),
            encoding="utf-8",
        )
        extra = ["--images", str(listing)] + (["--trusted"] if trusted else [])
        done = _run_worker("preset-check", path, extra, timeout_s=timeout_s)
    trial = _answer(done.stdout.decode("utf-8", "replace"), "preset_trial")
    if trial is not None:
        return trial
    _, reason = describe_exit(
        done.returncode,
        step="load",
        timed_out=False,
        limit_gb=protocol.DEFAULT_MEMORY_LIMIT_GB,
        stderr_tail=done.stderr.decode("utf-8", "replace"),
    )
    raise UnsupportedModel(f"the preset check could not run the model: {reason}")


def _run_inspect_worker(
    path: str,
    *,
    timeout_s: float,
    trusted: bool,
    input_size: tuple[int, int] | None,
    signature_key: str | None,
) -> subprocess.CompletedProcess[bytes]:
    extra = ["--trusted"] if trusted else []
    if input_size:
        extra += ["--input-size", f"{input_size[0]}x{input_size[1]}"]
    if signature_key:
        extra += ["--signature", signature_key]
    return _run_worker("inspect", path, extra, timeout_s=timeout_s)


def _run_worker(
    command_name: str, path: str, extra: list[str], *, timeout_s: float
) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "core.jobs.worker", command_name, path, *extra]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.setdefault(protocol.MEMORY_LIMIT_ENV, str(int(protocol.DEFAULT_MEMORY_LIMIT_GB * 2**30)))
    try:
        return subprocess.run(
            command,
            capture_output=True,
            timeout=timeout_s,
            env=env,
            check=False,
            start_new_session=True,
            cwd=str(SOURCE_ROOT),
        )
    except subprocess.TimeoutExpired:
        raise UnsupportedModel(
            f"reading the model took longer than {timeout_s:g} s; check the path or the model"
        ) from None


def _answer(stdout: str, key: str) -> dict[str, Any] | None:
    """The answer under `key` the worker printed (its last JSON line); raise the error it
    printed."""
    for line in reversed(stdout.splitlines()):
        try:
            answer = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(answer, dict):
            continue
        if key in answer:
            return dict(answer[key])
        if "error" in answer:
            cls = getattr(errors, answer.get("kind", ""), QuantLensError)
            if not (isinstance(cls, type) and issubclass(cls, QuantLensError)):
                cls = QuantLensError
            raise cls(answer["error"])
    return None


def _signature_from_json(data: dict[str, Any]) -> ModelSignature:
    return ModelSignature(**{**data, "input_shape": tuple(data["input_shape"])})
