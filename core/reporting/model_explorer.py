"""Per-layer error as node data for Google's Model Explorer (issue 12 item 6).

The file is a `GraphNodeData` of the `ai-edge-model-explorer` package
(model_explorer/node_data_builder.py): `results` maps each op's output tensor name, which
Model Explorer's TFLite adapter puts in the node's `outputsMetadata.tensor_name`, to
`{"value": error}`; a gradient colours the nodes from low (green) to high (red) error. A user
opens the variant's `.tflite` in Model Explorer and loads this file next to it. Pure Python:
the package is not needed to write it (tests read it back with the package's own types).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.inputs import rundir
from core.reporting.layer_rank import layer_error

SUFFIX = rundir.MODEL_EXPLORER  # `<file_id>.model-explorer.json` in the run folder
GRADIENT = [
    {"stop": 0, "bgColor": "#1a9850"},
    {"stop": 0.5, "bgColor": "#fee08b"},
    {"stop": 1, "bgColor": "#d73027"},
]


def node_data(
    variant: str, rows: Sequence[Mapping[str, Any]], diagnosis: Mapping[str, Any]
) -> dict[str, Any]:
    """The GraphNodeData of one diagnosed variant: its ops' error under the diagnosis's rule.

    The value is the error on the images the variant flipped when it flipped any (where a
    layer's error jumps is the suspect), else on the calibration images; ops without that
    statistic are left out rather than shown as 0.
    """
    ranked_by = str(diagnosis.get("ranked_by") or "rmse/scale")
    flipped = int(diagnosis.get("flipped_images") or 0) > 0
    results: dict[str, dict[str, float]] = {}
    for row in rows:
        value = layer_error(row, ranked_by=ranked_by, flipped=flipped)
        if value is not None and row.get("tensor_name"):
            results[str(row["tensor_name"])] = {"value": value}
    images = "flipped images" if flipped else "calibration images"
    return {
        "name": f"QuantLens {variant}: {ranked_by} on the {images}",
        "results": results,
        "gradient": GRADIENT,
    }


def node_data_json(
    variant: str, rows: Sequence[Mapping[str, Any]], diagnosis: Mapping[str, Any]
) -> str:
    """node_data as the JSON text Model Explorer loads (what the page offers to download)."""
    return json.dumps(node_data(variant, rows, diagnosis), indent=2)


def export_run(run_dir: Path) -> list[Path]:
    """Write `<file_id>.model-explorer.json` for every diagnosed variant of a finished run.

    Returns:
        The files written (none when no variant has a per-layer table).
    """
    from core.reporting.results import load_results

    res = load_results(run_dir)
    written: list[Path] = []
    for variant in res.variants:
        diagnosis = variant.extra.get("diagnosis")
        rows = res.layer_rows(variant.name) if diagnosis else []
        if not diagnosis or not rows:
            continue
        path = rundir.variant_file(run_dir, variant, SUFFIX)
        rundir.write_atomic(path, node_data_json(variant.name, rows, diagnosis).encode())
        written.append(path)
    return written
