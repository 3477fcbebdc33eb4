"""The one ranking of a variant's ops by their per-layer statistics.

The diagnosis writes it into `<variant>.layers.csv` (`stat_rank`), takes its suspects and the
auto-fix candidates from it, and the Layers page shows that column: one rule, so the page's rank
and report.json's `stat_rank` of a layer are the same number. Pure: rows are the table's rows
as csv.DictReader reads them (text cells, "" where a value is missing).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

RMSE_SCALE = "rmse/scale"
ONE_MINUS_COSINE = "1 - cosine"
STAT_RANK = "stat_rank"  # the table's column


def _value(row: Mapping[str, Any], column: str) -> float | None:
    raw = row.get(column)
    if raw is None or raw == "":
        return None
    return float(raw)


def ranking_rule(rows: Sequence[Mapping[str, Any]]) -> str:
    """rmse/scale when the variant quantizes activations; otherwise 1 − cosine similarity
    (float16 and dynamic-range tensors carry no activation scale)."""
    if any(_value(r, "rmse_per_scale") is not None for r in rows):
        return RMSE_SCALE
    return ONE_MINUS_COSINE


def layer_error(row: Mapping[str, Any], *, ranked_by: str, flipped: bool) -> float | None:
    """A table row's error under the ranking rule: rmse/scale, or 1 − cosine where the variant
    keeps float activations; None when the row has no such value."""
    prefix = "flipped_" if flipped else ""
    if ranked_by == RMSE_SCALE:
        return _value(row, f"{prefix}rmse_per_scale")
    cosine = _value(row, f"{prefix}cosine")
    return None if cosine is None else 1.0 - cosine


def statistic(row: Mapping[str, Any], *, ranked_by: str) -> float | None:
    """What an op is ranked by: its error on the flipped images (a layer whose error jumps where
    the answer flipped is the suspect), its error on the calibration images when it has none."""
    flipped = layer_error(row, ranked_by=ranked_by, flipped=True)
    return flipped if flipped is not None else layer_error(row, ranked_by=ranked_by, flipped=False)


def op_ranks(rows: Sequence[Mapping[str, Any]], *, ranked_by: str) -> dict[str, int]:
    """`order` (as text) -> rank, 1 the largest error; ties keep graph order. An op without a
    statistic (kept in float: nothing quantized to measure) has no rank."""
    scored = [(statistic(r, ranked_by=ranked_by), str(r["order"])) for r in rows]
    known = [(value, order) for value, order in scored if value is not None]
    ordered = sorted(known, key=lambda item: -item[0])  # stable: ties stay in graph order
    return {order: rank for rank, (_, order) in enumerate(ordered, 1)}


def table_ranks(rows: Sequence[Mapping[str, Any]], *, ranked_by: str) -> dict[str, int]:
    """The ranks as the table holds them: its `stat_rank` column, written by the diagnosis;
    computed by op_ranks for a table written before the column existed."""
    if rows and STAT_RANK in rows[0]:
        return {str(r["order"]): int(r[STAT_RANK]) for r in rows if r.get(STAT_RANK)}
    return op_ranks(rows, ranked_by=ranked_by)


def ranked_rows(
    rows: Sequence[Mapping[str, Any]], ranks: Mapping[str, int]
) -> list[Mapping[str, Any]]:
    """The rows by rank, the unranked ones last in graph order."""
    unranked = len(rows) + 1
    return sorted(rows, key=lambda r: ranks.get(str(r["order"]), unranked))


def layer_ranks(rows: Sequence[Mapping[str, Any]], ranks: Mapping[str, int]) -> dict[str, int]:
    """Keras layer -> the rank of its best-ranked op, most suspect first; a row that names no
    layer (in parentheses, such as the model output) is left out."""
    found: dict[str, int] = {}
    for row in ranked_rows(rows, ranks):
        rank = ranks.get(str(row["order"]))
        layer = str(row["layer"])
        if rank is not None and not layer.startswith("(") and layer not in found:
            found[layer] = rank
    return found
