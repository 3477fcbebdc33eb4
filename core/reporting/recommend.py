"""Choosing a variant: the size/latency/agreement trade-off, its Pareto frontier, and the pick."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.reporting.report import variant_of, verdict
from core.reporting.runmodel import RunReport, Variant, report_from
from core.types import short_name

# The dominance rule of the frontier, stated once for the captions and report.html.
FRONTIER_RULE = (
    "a variant is on the Pareto frontier when no other variant is at least as small, at least "
    "as fast (p50) and agrees at least as often, and strictly better in one of the three"
)


def pick_rule_text(threshold_pct: float) -> str:
    """The recommendation rule in words."""
    return (
        f"among variants whose lower 95 % Wilson bound of top-1 agreement is at least "
        f"{threshold_pct:g} %, the smallest, then the fastest (p50)"
    )


@dataclass(frozen=True)
class TradeoffPoint:
    """One finished variant on the trade-off chart: what its card shows, in chart units."""

    name: str
    size_mb: float
    p50_ms: float
    agreement_pct: float
    ci95: tuple[float, float] | None
    n: int | None
    verdict: str


def dominates(a: TradeoffPoint, b: TradeoffPoint) -> bool:
    """True when `a` is no worse than `b` on size, latency and agreement, and better on one."""
    no_worse = (
        a.size_mb <= b.size_mb and a.p50_ms <= b.p50_ms and a.agreement_pct >= b.agreement_pct
    )
    better = a.size_mb < b.size_mb or a.p50_ms < b.p50_ms or a.agreement_pct > b.agreement_pct
    return no_worse and better


def pareto_frontier(points: Sequence[TradeoffPoint]) -> list[str]:
    """Names of the points no other point dominates, smallest first (then fastest).

    Two identical points are both on the frontier: neither is strictly better.
    """
    kept = [p for p in points if not any(dominates(q, p) for q in points if q is not p)]
    return [p.name for p in sorted(kept, key=lambda p: (p.size_mb, p.p50_ms, p.name))]


def tradeoff_points(
    variants: Sequence[Variant | Mapping[str, Any]], *, label: str = "{name}"
) -> list[TradeoffPoint]:
    """The chart's points: every finished variant that has a size, a p50 and an agreement.

    Args:
        variants: the run's variants (any backend, any kind).
        label: how to name a point; "{name}" is the variant's name (Compare prefixes the run).
    """
    points = []
    for v in map(variant_of, variants):
        r = v.result
        if r.status != "done" or not r.size_bytes or r.p50_ms is None:
            continue
        if r.top1_agreement_pct is None:
            continue
        ci = r.top1_agreement_ci95
        points.append(
            TradeoffPoint(
                name=label.format(name=v.name),
                size_mb=float(r.size_bytes) / 1e6,
                p50_ms=r.p50_ms,
                agreement_pct=float(r.top1_agreement_pct),
                ci95=(float(ci[0]), float(ci[1])) if ci else None,
                n=r.n,
                verdict=verdict(v),
            )
        )
    return points


def judged(variant: Variant) -> bool:
    """Whether a variant was judged at all: finished, with an interval, not a no-verdict or pivot.

    A failed conversion, a variant whose original is near chance (NO VERDICT) and the float32
    pivot the user did not select (`role: pivot`, never judged) are never candidates.
    """
    r = variant.result
    return (
        r.status == "done"
        and r.passed is not None
        and not r.verdict_reason
        and not variant.is_pivot
        and bool(r.top1_agreement_ci95)
        and bool(r.size_bytes)
    )


def _lower(v: Variant) -> float:
    """The lower 95 % bound the rule ranks by: for a fix auto-fix derived, on the images its
    search did not see only (the images that chose a fix never vouch for it)."""
    held_out = v.held_out
    ci = v.result.top1_agreement_ci95 if held_out is None else held_out.top1_agreement_ci95
    assert ci is not None  # only judged variants are ranked, and they all have an interval
    return float(ci[0])


def _n(v: Variant) -> int | None:
    held_out = v.held_out
    return v.result.n if held_out is None else held_out.n


def _p50(v: Variant) -> float:
    """A variant's p50 in ms; one never timed sorts after every timed one."""
    p50 = v.result.p50_ms
    return float("inf") if p50 is None else p50


def _smallest_then_fastest(v: Variant) -> tuple[int, float, str]:
    return int(v.result.size_bytes or 0), _p50(v), v.name


def _mb(v: Variant) -> str:
    return f"{int(v.result.size_bytes or 0) / 1e6:.2f} MB"


def recommendation(report: RunReport | Mapping[str, Any]) -> dict[str, Any]:
    """The recommended variant of a report, with the rule, the runner-up and the reason.

    Rule: among judged variants whose lower 95 % Wilson bound of top-1 agreement meets the
    threshold, the smallest, then the fastest. When none qualifies `variant` is None and
    `closest` names the judged variant with the highest lower bound (then the smallest).

    Returns:
        {"variant", "rule", "runner_up", "reason", "closest"}; names are variant names.
    """
    typed = report_from(report)
    threshold = float(typed.options["min_agreement_pct"])
    rule = pick_rule_text(threshold)
    candidates = [v for v in typed.variants if judged(v)]
    qualified = sorted(
        (v for v in candidates if _lower(v) >= threshold), key=_smallest_then_fastest
    )
    if qualified:
        pick = qualified[0]
        runner_up = qualified[1] if len(qualified) > 1 else None
        reason = f"{short_name(pick.name)}: lower 95 % bound {_lower(pick):.1f} % ≥ {threshold:g} % at {_mb(pick)}"
        if runner_up is not None:
            reason += f"; next: {short_name(runner_up.name)} at {_mb(runner_up)}"
        return {
            "variant": pick.name,
            "rule": rule,
            "runner_up": None if runner_up is None else runner_up.name,
            "reason": reason,
            "closest": None,
        }
    if not candidates:
        return {
            "variant": None,
            "rule": rule,
            "runner_up": None,
            "reason": "no variant was judged (none finished with a verdict)",
            "closest": None,
        }
    closest = min(candidates, key=lambda v: (-_lower(v), *_smallest_then_fastest(v)))
    return {
        "variant": None,
        "rule": rule,
        "runner_up": None,
        "reason": (
            f"no variant's lower 95 % bound reaches {threshold:g} %; closest: "
            f"{short_name(closest.name)} at {_lower(closest):.1f} % (n={_n(closest)})"
        ),
        "closest": closest.name,
    }
