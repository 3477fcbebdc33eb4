"""Probability deltas page: a bar picked in the histogram lists exactly the samples it counted."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tests.app.conftest import OpenPage
from ui import keys


def _array(value: Any) -> np.ndarray:
    """A plotly JSON array: a plain list, or the typed-array form {"dtype", "bdata", "shape"}."""
    if not isinstance(value, dict):
        return np.asarray(value)
    flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
    shape = value.get("shape")
    if shape is None:
        return flat
    dims = [int(d) for d in (shape.split(",") if isinstance(shape, str) else shape)]
    return flat.reshape(dims)


def test_every_bar_lists_as_many_samples_as_it_counts(crafted: Path, open_page: OpenPage) -> None:
    at = open_page("deltas")
    chart = at.get("plotly_chart")[0]
    traces = json.loads(chart.proto.spec)["data"]
    assert [t["name"] for t in traces] == ["float16", "int8"]
    checked = 0
    for curve, trace in enumerate(traces):
        # Expected membership straight from the file the run wrote, by np.histogram's rule.
        values = pd.read_csv(crafted / f"{trace['name']}.samples.csv")["max_abs_delta"]
        for (lo, hi), count in zip(_array(trace["customdata"]), _array(trace["y"]), strict=True):
            if count == 0:
                continue
            point = {"curve_number": curve, "customdata": [float(lo), float(hi)]}
            at.session_state[keys.DELTAS_CHART] = {
                "selection": {"points": [point], "point_indices": [], "box": [], "lasso": []}
            }
            at.run()
            assert not at.exception, [e.value for e in at.exception]
            heading = at.subheader[0].value
            assert heading.startswith(f"{trace['name']}: max |Δp| in [")
            assert heading.endswith(f"— {int(count)} samples")
            checked += 1
        top = values.max()
        in_last = int(((values >= lo) & (values <= hi)).sum())
        assert in_last == int(count) and hi >= top  # the last bar holds the column's maximum
    assert checked >= 4
