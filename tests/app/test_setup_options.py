"""One option added to the declaration (core.options) and nothing else: the parser takes it,
the JobSpec carries it, the reproduce command repeats it and Setup draws its widget."""

from __future__ import annotations

import dataclasses
import json
import shlex
from pathlib import Path

import pytest

from core import options
from core.cli import _job_from_args, _parser
from core.options import InCommand, RunOption, SetupWidget, WidgetKind, at_least
from tests.app.conftest import OpenPage
from ui import keys

# `warmup_runs` is a JobSpec field no one asks for today; here it becomes a full option.
WARMUP = RunOption(
    "warmup_runs",
    ("--warmup-runs",),
    value_type=int,
    help="untimed runs before each model is timed",
    field="warmup_runs",
    checks=(at_least(0),),
    in_command=InCommand.UNLESS_DEFAULT,
    widget=SetupWidget(
        WidgetKind.NUMBER, "Warm-up runs", key="setup.warmup_runs", help="before timing"
    ),
)


@pytest.fixture
def with_warmup_option(monkeypatch: pytest.MonkeyPatch) -> RunOption:
    declared = tuple(WARMUP if o.name == "warmup_runs" else o for o in options.RUN_OPTIONS)
    monkeypatch.setattr(options, "RUN_OPTIONS", declared)
    return WARMUP


def test_one_declared_option_reaches_the_parser_the_job_the_command_and_setup(
    with_warmup_option: RunOption, home: Path, open_page: OpenPage
) -> None:
    # the parser and the JobSpec
    model, data = home / "m.keras", home / "d.csv"
    model.write_bytes(b"")
    data.write_text("filepath,label\n", encoding="utf-8")
    job = _job_from_args(
        _parser().parse_args(["run", str(model), "--data", str(data), "--warmup-runs", "7"])
    )
    assert job.warmup_runs == 7
    # the reproduce command, read back by the parser
    command = options.reproduce_command(job)
    assert command.endswith("--warmup-runs 7")
    assert _job_from_args(_parser().parse_args(shlex.split(command)[3:])) == job
    assert "--warmup-runs" not in options.reproduce_command(dataclasses.replace(job, warmup_runs=5))

    # Setup: the widget, with its declared label, help and JobSpec's default, remembered
    (home / "demo-build.pid").write_text("999999")  # no demo build: the form alone
    at = open_page("setup")
    widget = at.number_input(key="setup.warmup_runs")
    assert (widget.label, widget.help, widget.value) == ("Warm-up runs", "before timing", 5)
    widget.set_value(7).run()
    assert json.loads((home / "setup-form.json").read_text())["setup.warmup_runs"] == 7
    assert open_page("setup").number_input(key="setup.warmup_runs").value == 7
    # a value the declared check refuses is one line on the page and blocks Run
    at.number_input(key="setup.warmup_runs").set_value(-1).run()
    assert "--warmup-runs must be at least 0; got -1" in [e.value for e in at.error]
    assert any("an accepted value for Warm-up runs" in c.value for c in at.caption)
    assert at.button(key=keys.SETUP_RUN).disabled


def test_setup_draws_the_declared_words_of_the_options_it_places(
    home: Path, open_page: OpenPage
) -> None:
    """The hand-placed widgets take their label, help and first value from the declaration."""
    (home / "demo-build.pid").write_text("999999")
    at = open_page("setup")
    calibration = options.option("calibration_samples")
    assert calibration.widget is not None
    drawn = at.number_input(key=keys.SETUP_CALIBRATION)
    assert (drawn.label, drawn.help, drawn.value) == (
        calibration.widget.label,
        calibration.widget.help,
        100,
    )
    assert at.multiselect(key=keys.SETUP_MODES).value == list(options.job_default("variants"))
    assert at.radio(key=keys.SETUP_VERDICT).options == [
        "point: agreement ≥ threshold",
        "lower bound: 95 % CI low end ≥ threshold",
    ]
