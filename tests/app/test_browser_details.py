"""Small things seen in the browser: each checked on the function or page that draws it."""

from __future__ import annotations

from ui import runs


def test_a_pending_variant_says_pending_once() -> None:
    assert runs.variant_line("int8", "pending", "pending").endswith("**int8** — pending")
    line = runs.variant_line("int8", "running", "convert: converting")
    assert line.endswith("— running: convert\\: converting")


def test_a_sidebar_label_says_the_time_once() -> None:
    from datetime import UTC, datetime
    from pathlib import Path

    from core.history.store import RunRow
    from core.jobs.launch import default_run_name
    from core.types import RunStatus

    created = datetime(2026, 12, 7, 5, 30, 12, tzinfo=UTC)

    def row(name: str) -> RunRow:
        return RunRow(
            id="20261207-053012-abc123",
            name=name,
            created=created.isoformat(),
            finished=None,
            status=RunStatus.DONE,
            model_path="/m/saved_model",
            data_path="/d/data.csv",
            modes=["int8"],
            best_agreement_pct=None,
            all_passed=None,
            run_dir=Path("/runs/x"),
        )

    local = created.astimezone()
    default = default_run_name("/m/saved_model", local)
    label = runs.run_label(row(default))
    assert label == f"done · saved_model · {local:%H:%M} · abc123"
    assert runs.run_label(row("my run")) == f"done · my run · {local:%H:%M:%S} · abc123"
