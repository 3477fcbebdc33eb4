"""progress.jsonl, the run's progress log: one ProgressEvent per line, appended by the worker
(and by the supervisor after a crash), polled by the supervisor, the CLI and the dashboard.

Both ends are kept cheap on the cores timing is meant to leave free: the writer throttles the
per-batch events of a step (a few a second, always the step's first and last), and a reader
keeps the byte offset it reached, so a poll parses only the lines appended since.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from core.inputs import rundir
from core.types import ProgressEvent

EVENTS_PER_SECOND = 4  # per step and variant; a step's first and last events always get through
_CACHED_READERS = 64  # run folders whose reader (offset and events) a process keeps


def append_progress(run_dir: Path, event: ProgressEvent) -> None:
    """Add one event to progress.jsonl, as one line."""
    with (run_dir / rundir.PROGRESS).open("a", encoding="utf-8") as f:
        f.write(json.dumps(event.to_dict()) + "\n")


class ThrottledProgress:
    """A progress callback that appends events to progress.jsonl, at most a few per second
    for each (step, variant).

    An event is written at once when it starts or ends its step (fraction 0 or 1), when it
    belongs to another step than the event before it, or when its step's last write is
    1/EVENTS_PER_SECOND old; otherwise it waits, replaced by any newer event of its step. A
    waiting event is written before any event of another step, and by `flush()`, so the log
    keeps its order and a step's last word is never lost.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        per_second: float = EVENTS_PER_SECOND,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.run_dir = run_dir
        self.interval = 1.0 / per_second
        self.clock = clock
        self._last_write: dict[tuple[str, str | None], float] = {}
        self._waiting: dict[tuple[str, str | None], ProgressEvent] = {}
        self._last_key: tuple[str, str | None] | None = None
        self._lock = threading.Lock()  # the converter thread reports too

    def __call__(self, event: ProgressEvent) -> None:
        key = (event.step, event.variant)
        now = self.clock()
        with self._lock:
            due = (
                key != self._last_key
                or not 0.0 < event.fraction < 1.0
                or now - self._last_write.get(key, -float("inf")) >= self.interval
            )
            self._last_key = key
            if not due:
                self._waiting.pop(key, None)  # re-inserted last: the log keeps its order
                self._waiting[key] = event
                return
            self._waiting.pop(key, None)  # superseded by this newer event of its step
            self._write_waiting()
            append_progress(self.run_dir, event)
            self._last_write[key] = now

    def flush(self) -> None:
        """Write the events still waiting (call it when the work ends)."""
        with self._lock:
            self._write_waiting()

    def _write_waiting(self) -> None:
        for event in self._waiting.values():
            append_progress(self.run_dir, event)
        self._waiting.clear()


class ProgressReader:
    """progress.jsonl read from where the last read stopped.

    Only complete lines are parsed: a half-written last line is left for the next read. A file
    that was replaced or truncated (a reused run folder starts a new log) is read afresh.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / rundir.PROGRESS
        self._offset = 0
        self._file: tuple[int, int] | None = None  # (device, inode) of the file read so far
        self._head = b""  # its first line, which a new file would not start with
        self._events: list[ProgressEvent] = []
        self._lock = threading.Lock()

    def read_new(self) -> list[ProgressEvent]:
        """The events appended since the last read, oldest first."""
        with self._lock:
            return self._read_new()

    def read_all(self) -> list[ProgressEvent]:
        """Every event in the file, oldest first; only the new lines are parsed."""
        with self._lock:
            self._read_new()
            return list(self._events)

    def _read_new(self) -> list[ProgressEvent]:
        try:
            with self.path.open("rb") as f:
                if not self._same_file(f):
                    self._file, self._offset, self._head, self._events = None, 0, b"", []
                    info = os.fstat(f.fileno())
                    self._file = (info.st_dev, info.st_ino)
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return []
        complete = chunk[: chunk.rfind(b"\n") + 1]
        if not self._head and complete:
            self._head = complete[: complete.find(b"\n") + 1]
        self._offset += len(complete)
        new = _parse(complete)
        self._events.extend(new)
        return new

    def _same_file(self, f: BinaryIO) -> bool:
        """Whether `f` is the log read so far: same inode, not shorter, same first line (a
        new file can get a deleted one's inode number)."""
        info = os.fstat(f.fileno())
        if (info.st_dev, info.st_ino) != self._file or info.st_size < self._offset:
            return False
        return not self._head or os.pread(f.fileno(), len(self._head), 0) == self._head


def _parse(lines: bytes) -> list[ProgressEvent]:
    events = []
    for line in lines.splitlines():
        try:
            events.append(ProgressEvent(**json.loads(line)))
        except (ValueError, TypeError):  # a line no writer finished (a worker killed mid-write)
            continue
    return events


_READERS: OrderedDict[Path, ProgressReader] = OrderedDict()
_READERS_LOCK = threading.Lock()


def read_progress(run_dir: Path) -> list[ProgressEvent]:
    """Every progress event of the run, oldest first (a half-written last line is left out).

    The process keeps a reader per run folder, so polling it again parses only the new lines.
    """
    key = Path(run_dir).absolute()
    with _READERS_LOCK:
        reader = _READERS.pop(key, None) or ProgressReader(key)
        _READERS[key] = reader  # most recently used last
        while len(_READERS) > _CACHED_READERS:
            _READERS.popitem(last=False)
    return reader.read_all()
