"""report.json's `calibration` section in words: where the calibration images came from.

Written by core.engine.stages.decode (source held-out | overlapping | separate | none, counts,
path); Overview, report.html and the CLI show this one line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.reporting.sections.calibration_record import CalibrationRecord


def calibration_line(calibration: CalibrationRecord | None) -> str | None:
    """One line on the calibration images; None for runs that did not record it."""
    if calibration is None or calibration.source is None:
        return None
    source = calibration.source
    images = calibration.images
    if source == "held-out":
        return (
            f"calibration: {images} images held out of evaluation (seeded draw from a pool of "
            f"{calibration.held_out}); the evaluated images come from the other "
            f"{calibration.evaluable}"
        )
    if source == "separate":
        return (
            f"calibration: {images} images from a separate set ({calibration.path}); "
            "nothing held out of the evaluated data"
        )
    if source == "overlapping":
        return (
            f"calibration: {images} images drawn from the whole data set, so some may also be "
            f"evaluated ({calibration.reason})"
        )
    return f"calibration: none needed ({calibration.reason})"
