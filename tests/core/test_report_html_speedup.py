"""report.html states each speed-up against float32 TFLite with its spread over timing blocks,
the TensorFlow original second, and flags a speed-up whose blocks disagree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from core.reporting.html import render_report_html
from tests.core.test_report_html import _parse, _row, _variant


def _spread(base: list[float], mine: list[float]) -> dict[str, Any]:
    ratios = np.array(base) / np.array(mine)
    disagree = ratios.max() / ratios.min()
    return {
        "value": float(np.median(ratios)),
        "low": float(ratios.min()),
        "high": float(ratios.max()),
        "blocks": len(ratios),
        "block_ratios": ratios.tolist(),
        "baseline_block_p50_ms": base,
        "block_p50_ms": mine,
        "unstable": f"unstable: blocks disagree by {disagree:.1f}×" if disagree > 1.5 else None,
    }


def test_report_html_shows_the_speed_up_with_its_spread_and_the_flag(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    original = [40.0, 41.0, 39.0, 40.0]
    steady = {
        "baseline": "float32",
        **_spread([4.0, 4.1, 3.9, 4.0], [2.0, 2.0, 2.0, 2.0]),
        "vs_original": _spread(original, [2.0, 2.0, 2.0, 2.0]),
    }
    busy = {
        "baseline": "float32",
        **_spread([4.0, 4.0, 4.0, 4.0], [1.0, 1.0, 3.0, 3.0]),  # busy for its last two blocks
        "vs_original": _spread(original, [1.0, 1.0, 3.0, 3.0]),
    }
    report = {
        "run": {"id": "r", "name": "speed", "status": "done"},
        "dataset": {"path": str(tmp_path / "nowhere"), "num_skipped": 0},
        "variants": [
            _variant("float16", speedup=steady, speedup_vs_reference=20.0),
            _variant("int8", speedup=busy, speedup_vs_reference=20.0),
        ],
    }
    (run / "report.json").write_text(json.dumps(report))
    parsed = _parse(render_report_html(run))
    head = parsed.tables["speedup"][0]
    assert head[1] == "vs float32 TFLite (the baseline)"
    assert head[2] == "second: vs the TensorFlow original"
    float16 = _row(parsed, "speedup", "float16")
    assert (
        float16[1]
        == "vs float32 TFLite (same LiteRT runtime): 2.0× faster (blocks 1.95–2.05×, 4 blocks)"
    )
    assert float16[2].startswith("vs the TensorFlow original: 20.0× faster (blocks 19.50–20.50×")
    assert float16[3] == ""
    int8 = _row(parsed, "speedup", "int8")
    assert int8[1].startswith(
        "vs float32 TFLite (same LiteRT runtime): 2.7× faster (blocks 1.33–4.00×"
    )
    assert int8[3].startswith("unstable: blocks disagree by 3.0×")
