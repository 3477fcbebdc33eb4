"""progress.jsonl: a reader that parses only what was appended since its last read, and a
writer that throttles per-batch events without losing a step's first or last word."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

from core.inputs import rundir
from core.runfolder.progress import ProgressReader, ThrottledProgress, read_progress
from core.types import ProgressEvent


def _lines(count: int) -> bytes:
    steps = ("decode", "reference", "infer", "convert")
    return b"".join(
        json.dumps(
            {
                "step": steps[i % 4],
                "fraction": (i % 10) / 10,
                "message": f"event {i} · ü",  # a multi-byte character can be cut in two as well
                "variant": None if i % 3 else f"int8_{i}",
                "time": float(i),
            }
        ).encode("utf-8")
        + b"\n"
        for i in range(count)
    )


def _whole_read(path: Path) -> list[dict[str, object]]:
    """What a full read of the file's complete lines holds (independent of the reader)."""
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def test_reader_returns_the_events_of_a_whole_read_over_a_file_appended_in_pieces(
    tmp_path: Path,
) -> None:
    data = _lines(400)
    path = tmp_path / rundir.PROGRESS
    path.write_bytes(b"")
    rng = random.Random(0)
    reader = ProgressReader(tmp_path)
    collected: list[ProgressEvent] = []
    start = 0
    cut_a_line = False
    while start < len(data):
        end = min(len(data), start + rng.randint(1, 300))
        cut_a_line |= data[end - 1 : end] != b"\n"
        with path.open("ab") as f:
            f.write(data[start:end])  # often ends inside a line: a writer caught mid-write
        start = end
        collected += reader.read_new()
        expected = _whole_read(path)
        assert [e.to_dict() for e in collected] == expected
        assert [e.to_dict() for e in read_progress(tmp_path)] == expected
    assert cut_a_line
    assert len(collected) == 400


def test_a_second_read_parses_only_the_appended_lines(tmp_path: Path) -> None:
    """Lines already read are not read again: overwriting them in place changes nothing."""
    path = tmp_path / rundir.PROGRESS
    first = _lines(50)
    path.write_bytes(first)
    before = read_progress(tmp_path)
    assert len(before) == 50
    head = len(_lines(1))
    with path.open("r+b") as f:  # every line after the first: the same bytes count, not JSON
        f.seek(head)
        f.write(b"x" * (len(first) - head - 1))
    with path.open("ab") as f:
        f.write(_lines(51)[len(first) :])
    after = read_progress(tmp_path)
    assert after[:50] == before
    assert [e.message for e in after[50:]] == ["event 50 · ü"]


def test_a_replaced_log_is_read_from_its_start(tmp_path: Path) -> None:
    """A reused run folder starts a new progress.jsonl: its reader starts over."""
    path = tmp_path / rundir.PROGRESS
    path.write_bytes(_lines(30))
    assert len(read_progress(tmp_path)) == 30
    path.unlink()
    path.write_bytes(_lines(2))
    assert [e.message for e in read_progress(tmp_path)] == ["event 0 · ü", "event 1 · ü"]
    # Replaced by a longer log whose inode number may be the old one's: its first line differs.
    path.unlink()
    path.write_bytes(_lines(60)[len(_lines(1)) :])
    assert [e.message for e in read_progress(tmp_path)][:2] == ["event 1 · ü", "event 2 · ü"]
    assert len(read_progress(tmp_path)) == 59


def test_throttled_writer_writes_far_fewer_lines_and_keeps_each_steps_last(
    tmp_path: Path,
) -> None:
    """10,000 batch updates over ten (simulated) seconds: a few lines a second, and 1.0 last."""
    ticks = itertools.count()
    write = ThrottledProgress(tmp_path, per_second=4, clock=lambda: next(ticks) * 0.001)
    total = 10_000
    write(ProgressEvent("decode", 0.0, "decoding", None))
    for done in range(1, total + 1):
        write(ProgressEvent("infer", done / total, f"ran {done}/{total}", "int8"))
    write.flush()
    lines = [json.loads(line) for line in (tmp_path / rundir.PROGRESS).read_text().splitlines()]
    infer = [line for line in lines if line["step"] == "infer"]
    assert len(lines) <= 1 + 10 * 4 + 2  # ten seconds at four a second, plus first and last
    assert len(infer) >= 10 * 4 - 1  # still a live bar: a few updates every second
    assert infer[-1]["fraction"] == 1.0 and infer[-1]["message"] == f"ran {total}/{total}"
    fractions = [line["fraction"] for line in infer]
    assert fractions == sorted(fractions)


def test_a_waiting_event_is_written_before_the_next_step_and_on_flush(tmp_path: Path) -> None:
    """A step that ends without reaching 1.0 still leaves its last event, in order."""
    write = ThrottledProgress(tmp_path, per_second=4, clock=lambda: 0.0)  # time stands still
    write(ProgressEvent("infer", 0.0, "start", "int8"))
    write(ProgressEvent("infer", 0.3, "ran 3/10", "int8"))
    write(ProgressEvent("infer", 0.6, "ran 6/10", "int8"))  # replaces the one before
    write(ProgressEvent("variant", 1.0, "int8 failed", "int8"))
    write(ProgressEvent("latency", 0.0, "timing", None))
    write(ProgressEvent("latency", 0.5, "half way", None))
    write.flush()
    messages = [e.message for e in read_progress(tmp_path)]
    assert messages == ["start", "ran 6/10", "int8 failed", "timing", "half way"]
