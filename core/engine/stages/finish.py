"""The finish stage: the run's status and recommendation in report.json; scratch files removed."""

from __future__ import annotations

from core.engine.stages.context import RunContext
from core.engine.stages.files import remove_scratch


def finish(run: RunContext) -> None:
    from core.reporting.recommend import recommendation, recommendations
    from core.reporting.report import run_status

    run.report.set_run_status(run_status(run.report.read_only))
    # The run's target (`--target`, else cpu) is the headline; every target's pick beside it.
    run.report.set_run_part("recommendation", recommendation(run.report.read_only))
    run.report.set_run_part("recommendations", recommendations(run.report.read_only))
    run.report.save()
    remove_scratch(run.run_dir)
    run.emit("done", 1.0, "all variants finished")
