"""Small things seen in the browser: each checked on the function or page that draws it."""

from __future__ import annotations

from pathlib import Path

from tests.app.conftest import OpenPage
from ui import runs


def test_a_pending_variant_says_pending_once() -> None:
    assert runs.variant_line("int8", "pending", "pending").endswith("**int8** — pending")
    line = runs.variant_line("int8", "running", "convert: converting")
    assert line.endswith("— running: convert\\: converting")


def test_a_sidebar_label_says_the_time_once() -> None:
    from datetime import UTC, datetime

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


def test_agreement_lists_a_nameless_class_by_its_index_once(
    home: Path, open_page: OpenPage
) -> None:
    import json

    from tests.app.fixtures import build_run

    run = build_run(home, flips={"float16": 0, "int8": 6})
    report = json.loads((run / "report.json").read_text())
    report["dataset"]["class_names"] = None  # a data set without names: classes are indices
    (run / "report.json").write_text(json.dumps(report))
    (run / "labels.txt").unlink(missing_ok=True)
    at = open_page("agreement")
    assert not at.exception
    table = next(df.value for df in at.dataframe if "class" in df.value.columns)
    classes = [str(c) for c in table["class"]]
    assert classes and all(c.isdigit() for c in classes), classes  # "7", never "7: 7"
    picker = next(s for s in at.selectbox if s.label == "Class to inspect")
    assert all(":" not in o for o in picker.options)


def test_the_agreement_chart_names_its_threshold_off_the_bars() -> None:
    from core.reporting.figures import agreement_figure

    fig = agreement_figure(
        ["float16", "int8"], [100.0, 96.0], [(90.0, 100.0), (88.0, 99.0)], threshold_pct=95.0
    )
    assert not fig.layout.annotations  # a label on the plot landed on a bar
    assert "dashed: threshold 95 %" in fig.layout.title.text


def test_history_sizes_its_status_column_for_cancelled(home: Path, open_page: OpenPage) -> None:
    import json

    from tests.app.fixtures import build_run

    build_run(home, status="cancelled")
    at = open_page("history")
    config = json.loads(at.dataframe[0].proto.columns)
    assert config["status"]["width"] >= len("interrupted") * 9, config.get("status")


def _progress_box_script() -> None:
    from ui import runs

    runs.draw_progress("run-fixture")


def test_a_running_runs_progress_box_stays_running(home: Path) -> None:
    """The box is drawn straight from the run folder (a page would first mark a run whose
    supervisor is gone as failed)."""
    from streamlit.testing.v1 import AppTest

    from tests.app.fixtures import build_run

    build_run(home, status="running")
    at = AppTest.from_function(_progress_box_script, default_timeout=30).run()
    assert not at.exception
    [box] = at.get("status")
    assert box.label.startswith(("Running", "Starting")), box.label
    assert box.state == "running"  # `with st.status` ended on a green check


def test_overview_says_when_the_preset_check_found_a_better_preset(
    home: Path, open_page: OpenPage
) -> None:
    import json

    from tests.app.fixtures import build_run

    run = build_run(home)
    report = json.loads((run / "report.json").read_text())
    advice = (
        "preset check: the original is 100.0 % accurate with preset raw but 25.0 % with unit "
        "on the same 40 labelled images (McNemar p = 4e-09); the preset is probably wrong: use raw"
    )
    report["preset_check"] = {"used": "unit", "better": "raw", "advice": advice}
    (run / "report.json").write_text(json.dumps(report))
    at = open_page("overview")
    assert [w.value.replace("\\", "") for w in at.warning if "preset check" in w.value] == [advice]
