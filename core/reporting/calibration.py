"""report.json's `calibration` section in words: where the calibration images came from.

Written by core.engine.stages.decode (source held-out | overlapping | separate | none, counts,
path); Overview, report.html and the CLI show this one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def calibration_line(calibration: Mapping[str, Any] | None) -> str | None:
    """One line on the calibration images; None for runs that did not record it."""
    if not calibration:
        return None
    source = calibration.get("source")
    images = calibration.get("images")
    if source == "held-out":
        return (
            f"calibration: {images} images held out of evaluation (seeded draw from a pool of "
            f"{calibration.get('held_out')}); the evaluated images come from the other "
            f"{calibration.get('evaluable')}"
        )
    if source == "separate":
        return (
            f"calibration: {images} images from a separate set ({calibration.get('path')}); "
            "nothing held out of the evaluated data"
        )
    if source == "overlapping":
        return (
            f"calibration: {images} images drawn from the whole data set, so some may also be "
            f"evaluated ({calibration.get('reason')})"
        )
    return f"calibration: none needed ({calibration.get('reason')})"
