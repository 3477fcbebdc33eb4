"""The run database's schema: the forward migrations that build it, one step per version."""

from __future__ import annotations

# Forward migrations: MIGRATIONS[i] takes a database from user_version i to i + 1. Each step runs
# in one transaction together with the user_version bump, so a crash mid-migration leaves the old
# version intact. Never edit a released step; append a new one.
MIGRATIONS: list[tuple[str, ...]] = [
    # 0 -> 1: the first schema (no trust flag, no latency table).
    (
        """
        CREATE TABLE runs (
            id            TEXT PRIMARY KEY,
            name          TEXT NOT NULL DEFAULT '',
            created       TEXT NOT NULL,
            finished      TEXT,
            status        TEXT NOT NULL,
            model_path    TEXT,
            model_format  TEXT,
            model_sha256  TEXT,
            data_path     TEXT,
            data_sha256   TEXT,
            preset        TEXT,
            options_json  TEXT,
            job_json      TEXT,
            versions_json TEXT,
            cpu           TEXT,
            threads       INTEGER,
            error         TEXT,
            run_dir       TEXT NOT NULL
        )
        """,
        "CREATE INDEX runs_created ON runs (created)",
        """
        CREATE TABLE variants (
            run_id             TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            name               TEXT NOT NULL,
            mode               TEXT,
            io_type            TEXT,
            options_json       TEXT,
            status             TEXT NOT NULL,
            error              TEXT,
            size_bytes         INTEGER,
            metrics_json       TEXT,
            top1_agreement_pct REAL,
            passed             INTEGER,
            PRIMARY KEY (run_id, name)
        )
        """,
    ),
    # 1 -> 2: trusted-mode flag on runs (RELIABILITY 1) and per-model latency summaries.
    (
        "ALTER TABLE runs ADD COLUMN trusted INTEGER NOT NULL DEFAULT 0",
        """
        CREATE TABLE latency (
            run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
            model  TEXT NOT NULL,
            "min"  REAL,
            p50    REAL,
            p90    REAL,
            p99    REAL,
            mean   REAL,
            std    REAL,
            n      INTEGER,
            PRIMARY KEY (run_id, model)
        )
        """,
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)
