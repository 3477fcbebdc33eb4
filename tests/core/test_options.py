"""The run options are declared once (core.options): the declaration covers JobSpec, its
defaults are JobSpec's, and a refused value is one line naming its flag (no TensorFlow).
tests/app/test_setup_options.py adds an option and finds it in the parser, the job, the
reproduce command and Setup."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from core import options
from core.cli import _job_from_args, _parser, main
from core.options import InCommand, RunOption, SetupWidget, WidgetKind
from core.types import JobSpec


def test_every_jobspec_field_is_declared_once_and_every_declaration_fills_a_field() -> None:
    job_fields = [f.name for f in dataclasses.fields(JobSpec)]
    declared = [opt.field for opt in options.RUN_OPTIONS if opt.field is not None]
    assert sorted(declared) == sorted(job_fields)  # each field once, no field left out
    for opt in options.RUN_OPTIONS:
        # An option fills a field, shapes one another option fills, or governs the command.
        assert opt.field is None or opt.shapes is None, opt.name
        if opt.shapes is not None:
            assert opt.shapes in job_fields, opt.name
        if opt.field is None and opt.shapes is None:
            assert opt.in_command is InCommand.NEVER and opt.flags, opt.name
    names = [opt.name for opt in options.RUN_OPTIONS]
    assert len(set(names)) == len(names)


def test_the_parser_defaults_make_jobspecs_defaults(tmp_path: Path) -> None:
    """No default is written twice: the parser's defaults give the JobSpec the same values."""
    model, data = tmp_path / "m.keras", tmp_path / "d.csv"
    model.write_bytes(b"")
    data.write_text("filepath,label\n", encoding="utf-8")
    job = _job_from_args(_parser().parse_args(["run", str(model), "--data", str(data)]))
    assert job == JobSpec(model_path=str(model.resolve()), data_path=str(data.resolve()))


def test_the_fix_searchs_split_seed_reaches_the_job_and_the_reproduce_command(
    tmp_path: Path,
) -> None:
    """`--fix-seed` fills JobSpec.fix_seed (the auto-fix search splits its images with it) and
    the reproduce command repeats it, so the command gives the same split; the default (0) is
    left out of the command."""
    import shlex

    model, data = tmp_path / "m.keras", tmp_path / "d.csv"
    model.write_bytes(b"")
    data.write_text("filepath,label\n", encoding="utf-8")
    base = ["run", str(model), "--data", str(data), "--auto-fix"]
    job = _job_from_args(_parser().parse_args([*base, "--fix-seed", "7"]))
    assert job.fix_seed == 7
    command = options.reproduce_command(job)
    assert "--fix-seed 7" in command
    again = _job_from_args(_parser().parse_args(shlex.split(command)[3:]))
    assert again == job
    default = _job_from_args(_parser().parse_args(base))
    assert default.fix_seed == 0 and "--fix-seed" not in options.reproduce_command(default)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--samples", "0"], "--samples must be at least 1; got 0"),
        (["--latency-budget", "0.001"], "--latency-budget must be at least 0.01; got 0.001"),
        (["--sweep-seeds", "0"], "--sweep-seeds must be at least 1; got 0"),
        (["--fix-seed", "-1"], "--fix-seed must be at least 0; got -1"),
        (["--min-agreement", "101"], "--min-agreement is a percentage from 0 to 100; got 101"),
        (["--input-size", "3y4"], "--input-size takes HxW such as 224x224; got '3y4'"),
        (["--modes", "int8,int8"], "--modes names a variant twice (int8,int8); list each once"),
        (
            ["--timeout", "0"],
            "--timeout must be greater than 0; got 0 (leave it out for the default)",
        ),
        (
            ["--memory-gb", "nan"],
            "--memory-gb must be greater than 0; got nan (leave it out for the default)",
        ),
        (
            ["--calibration-data", "/nonexistent/cal"],
            "--calibration-data /nonexistent/cal does not exist; check the path",
        ),
        (
            ["--ray-node-ip", "10.0.0.7"],
            "--ray-node-ip 10.0.0.7 needs --engine ray; add it, or drop the option",
        ),
    ],
)
def test_a_refused_value_is_one_line_naming_its_flag(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = tmp_path / "m.keras", tmp_path / "d.csv"
    model.write_bytes(b"")
    data.write_text("filepath,label\n", encoding="utf-8")
    assert main(["run", str(model), "--data", str(data), *extra]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"


def test_setup_offers_the_choices_a_widget_labels_when_the_cli_takes_free_text() -> None:
    """A multiselect for a comma-separated option (--modes, --runtimes) offers the widget's
    choices, else the option's, else the ones its labels name."""
    labelled = RunOption(
        "kernels",
        ("--kernels",),
        widget=SetupWidget(
            WidgetKind.MULTISELECT,
            "Kernels",
            key="setup.kernels",
            choice_labels={"a": "A", "b": "B"},
        ),
    )
    assert labelled.form_choices == ("a", "b")
    assert options.option("modes").form_choices[:4] == ("float32", "dynamic", "float16", "int8")
    assert options.option("verdict").form_choices == ("point", "lower-bound")
