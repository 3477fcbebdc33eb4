"""A variant's speed-up as people read it: against float32 TFLite first, with its spread over
timing blocks and the flag when the blocks disagree; against the TensorFlow original second,
labelled as such. The Overview card and report.html both say it with these lines."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

BASELINE_LABEL = "float32 TFLite"
ORIGINAL_LABEL = "the TensorFlow original"


@dataclass(frozen=True)
class SpeedupLines:
    """What to say about one variant's speed-up (each None when there is nothing to say)."""

    headline: str | None  # vs float32 TFLite, with its spread; or why there is no baseline
    vs_original: str | None  # "vs the TensorFlow original: …"
    unstable: str | None  # "unstable: blocks disagree by 2.3×" (either comparison)
    value: float | None  # the headline factor, for a metric's delta


def times(value: float) -> str:
    """A factor as "3.2× faster" or "1.3× slower"."""
    return f"{value:.1f}× faster" if value >= 1 else f"{1 / value:.1f}× slower"


def spread_text(spread: Mapping[str, Any]) -> str:
    """ "3.2× faster (blocks 2.9–3.4×, n = 5)": the median block ratio and the range of them."""
    value = float(spread["value"])
    blocks = int(spread.get("blocks") or 0)
    if blocks < 2:
        return f"{times(value)} (one timing block: no spread)"
    return (
        f"{times(value)} (blocks {float(spread['low']):.2f}–{float(spread['high']):.2f}×, "
        f"{blocks} blocks)"
    )


def speedup_cells(name: str, speedup: Mapping[str, Any] | None) -> tuple[str, str]:
    """A variant's two speed-ups for a table whose headers already name the baselines:
    ("3.2× faster (blocks 2.9–3.4×, 5 blocks)", the same against the TensorFlow original)."""
    if not speedup:
        return "—", "—"
    original = speedup.get("vs_original") or {}
    second = spread_text(original) if original.get("value") is not None else "—"
    if speedup.get("missing"):
        return "no baseline", second
    if speedup.get("baseline") == name or speedup.get("value") is None:
        return "baseline", second
    return spread_text(speedup), second


def speedup_lines(
    name: str, speedup: Mapping[str, Any] | None, legacy_vs_original: float | None
) -> SpeedupLines:
    """The lines for variant `name` from its `speedup` entry (or, for a report from before the
    entry existed, its bare `speedup_vs_reference`, which had no spread)."""
    if not speedup:
        if not legacy_vs_original:
            return SpeedupLines(None, None, None, None)
        return SpeedupLines(
            f"no {BASELINE_LABEL} baseline was timed for this run",
            f"vs {ORIGINAL_LABEL}: {times(float(legacy_vs_original))} "
            "(timed one model after another; no spread recorded)",
            None,
            None,
        )
    original = speedup.get("vs_original") or {}
    vs_original = (
        f"vs {ORIGINAL_LABEL}: {spread_text(original)}"
        if original.get("value") is not None
        else None
    )
    flags = []
    baseline = speedup.get("baseline")
    value = speedup.get("value")
    if speedup.get("missing"):
        headline = f"no {BASELINE_LABEL} baseline: {speedup['missing']}"
    elif baseline == name or value is None:
        headline = f"the {BASELINE_LABEL} baseline every speed-up is stated against"
    else:
        headline = f"vs {BASELINE_LABEL} (same LiteRT runtime): {spread_text(speedup)}"
        if speedup.get("unstable"):
            flags.append(str(speedup["unstable"]))
    if original.get("unstable"):
        flags.append(f"{original['unstable']} (vs {ORIGINAL_LABEL})")
    return SpeedupLines(
        headline,
        vs_original,
        "; ".join(flags) or None,
        None if value is None or baseline == name else float(value),
    )
