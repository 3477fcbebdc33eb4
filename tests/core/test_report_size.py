"""report.json stays small with many classes: flip matrices are stored sparse (schema 3), and
the store's copy of a variant leaves them in the run folder.

The report is built by bench/report_size.py through the real report-building code (agreement,
finished_variant, the worker's ReportFile) from per-sample probabilities; the flip counts are
recomputed here from the per-image top-1 classes, independently of core.metrics.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from bench.report_size import build_report
from core.history.rows import variant_row
from core.reporting.figures import FLIP_MATRIX_MAX_CLASSES, flip_matrix_figure
from core.reporting.runmodel import read_report

CLASSES = 1000
VARIANTS = 5


def test_a_thousand_class_five_variant_report_is_under_a_megabyte(tmp_path: Path) -> None:
    tops = build_report(tmp_path, classes=CLASSES, variants=VARIANTS, images=2000)
    path = tmp_path / "report.json"
    assert path.stat().st_size < 1_000_000
    report = read_report(tmp_path)
    assert len(report.variants) == VARIANTS
    for variant in report.variants:
        ref, tfl = tops[variant.name]
        expected = Counter(
            (int(r), int(t)) for r, t in zip(ref, tfl, strict=True) if int(r) != int(t)
        )
        flips = variant.result.flip_matrix
        assert flips is not None and flips.classes == CLASSES
        assert {(r, t): n for r, t, n in flips.cells} == dict(expected)
        assert flips.total == variant.result.disagreements == sum(expected.values()) > 0
        # The store keeps the variant's numbers, not its per-class flips.
        metrics = variant_row(variant).metrics
        assert "flip_matrix" not in metrics
        assert metrics["top1_agreement_pct"] == variant.result.top1_agreement_pct
    raw = json.loads(path.read_text(encoding="utf-8"))
    assert raw["schema_version"] == 3
    # The Agreement page's heatmap draws the busiest classes, each cell mapped to its classes.
    worst = report.variants[-1]
    assert worst.result.flip_matrix is not None
    figure = flip_matrix_figure(worst.result.flip_matrix, report.dataset["class_names"])
    heatmap = figure.data[0]
    assert len(heatmap.x) == len(heatmap.y) == FLIP_MATRIX_MAX_CLASSES
    expected_worst = Counter(
        (int(r), int(t)) for r, t in zip(*tops[worst.name], strict=True) if int(r) != int(t)
    )
    weight: Counter[int] = Counter()
    for (r, t), n in expected_worst.items():
        weight[r] += n
        weight[t] += n
    shown = [int(cells[0][0]) for cells in heatmap.customdata]
    assert list(heatmap.y) == [f"class_{c:04d}" for c in shown]
    # No class left out is in more flips than a class shown.
    assert min(weight[c] for c in shown) >= max(w for c, w in weight.items() if c not in shown)
    for row, cells in zip(heatmap.z, heatmap.customdata, strict=True):
        for value, (r, t) in zip(row, cells, strict=True):
            count = expected_worst.get((int(r), int(t)), 0)
            assert (value != value and count == 0) or value == count  # NaN marks an empty cell
