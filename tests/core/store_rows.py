"""What the run store holds, read with plain SQL on a second, read-only SQLite connection: the
tests' own look at the tables, sharing no code with RunStore's queries."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from core.history.store import RunStore

LATENCY_COLUMNS = ("min", "p50", "p90", "p99", "mean", "std", "n")


def _rows(store: RunStore, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(f"{store.db_path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def stored_variants(store: RunStore, run_id: str) -> list[dict[str, Any]]:
    """A run's variant rows in the order first written: the stored metrics and options, with
    the columns (status, error, size, agreement, passed) over them."""
    rows = _rows(
        store,
        "SELECT name, mode, io_type, status, error, size_bytes, top1_agreement_pct, passed,"
        " metrics_json, options_json FROM variants WHERE run_id = ? ORDER BY rowid",
        run_id,
    )
    out = []
    for name, mode, io_type, status, error, size, agree, passed, metrics, options in rows:
        entry: dict[str, Any] = {**json.loads(metrics or "{}"), **json.loads(options or "{}")}
        entry.update(
            name=name,
            mode=mode,
            io_type=io_type,
            status=status,
            error=error,
            size_bytes=size,
            top1_agreement_pct=agree,
            passed=None if passed is None else bool(passed),
        )
        out.append(entry)
    return out


def stored_latency(store: RunStore, run_id: str) -> dict[str, dict[str, Any]]:
    """A run's latency rows by model ("reference" or a variant's name)."""
    columns = ", ".join(f'"{c}"' for c in LATENCY_COLUMNS)
    rows = _rows(store, f"SELECT model, {columns} FROM latency WHERE run_id = ?", run_id)
    return {r[0]: dict(zip(LATENCY_COLUMNS, r[1:], strict=True)) for r in rows}


def store_variants(store: RunStore, run_id: str, *variants: Mapping[str, Any]) -> None:
    """Give a run exactly these variants, as a worker's report sync does."""
    store.sync_report(run_id, {"variants": [dict(v) for v in variants]})
