"""Choosing a variant: the size/latency/agreement trade-off, its Pareto frontier, and the pick."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.reporting.report import (
    VERDICT_LOWER_BOUND,
    VERDICT_POINT,
    meets_threshold,
    variant_of,
    verdict,
)
from core.reporting.runmodel import RunReport, report_from
from core.reporting.sections.runtime_matrix import RuntimeMatrix
from core.reporting.sections.variant import Variant
from core.reporting.speedup import BASELINE_LABEL, ORIGINAL_LABEL, times
from core.reporting.targets import (
    DEFAULT_TARGET,
    GPU_NOT_EVALUATED,
    PROFILES,
    Target,
    cpu_fallback,
    exclusion,
)
from core.types import VariantStatus, short_name

BASELINE = "float32"  # the float32 TFLite variant's name (core.engine.stages.latency.BASELINE)

# The dominance rule of the frontier, stated once for the captions and report.html.
FRONTIER_RULE = (
    "a variant is on the Pareto frontier when no other variant is at least as small, at least "
    "as fast (p50) and agrees at least as often, and strictly better in one of the three"
)


def pick_rule_text(
    threshold_pct: float, *, verdict: str = VERDICT_POINT, target: str = "cpu"
) -> str:
    """The recommendation rule in words, for one target."""
    profile = PROFILES[Target(target)]
    passes = (
        f"the lower 95 % Wilson bound of top-1 agreement is at least {threshold_pct:g} %"
        if verdict == VERDICT_LOWER_BOUND
        else f"top-1 agreement is at least {threshold_pct:g} %"
    )
    return (
        f"for {profile.title}: among variants it can run whose {passes} (the run's verdict), the "
        f"smallest that is not slower than {BASELINE_LABEL} on the same runtime, then the "
        f"fastest (p50); a variant slower than {BASELINE_LABEL} only when no faster one passes, "
        "and then it says so; a derived variant whose outputs equal its parent's is listed once"
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
    # For a chosen target: can it run this variant, and what to flag (the exclusion reason, or
    # Vela leaving ops to the CPU). True and None when no target was asked for.
    runnable: bool = True
    note: str | None = None


def dominates(a: TradeoffPoint, b: TradeoffPoint) -> bool:
    """True when `a` is no worse than `b` on size, latency and agreement, and better on one."""
    no_worse = (
        a.size_mb <= b.size_mb and a.p50_ms <= b.p50_ms and a.agreement_pct >= b.agreement_pct
    )
    better = a.size_mb < b.size_mb or a.p50_ms < b.p50_ms or a.agreement_pct > b.agreement_pct
    return no_worse and better


def pareto_frontier(points: Sequence[TradeoffPoint]) -> list[str]:
    """Names of the runnable points no other runnable point dominates, smallest first (then
    fastest). A point the chosen target cannot run is not on that target's frontier.

    Two identical points are both on the frontier: neither is strictly better.
    """
    points = [p for p in points if p.runnable]
    kept = [p for p in points if not any(dominates(q, p) for q in points if q is not p)]
    return [p.name for p in sorted(kept, key=lambda p: (p.size_mb, p.p50_ms, p.name))]


def tradeoff_points(
    variants: Sequence[Variant | Mapping[str, Any]],
    *,
    label: str = "{name}",
    target: str | None = None,
    arena_limit_kb: float | None = None,
) -> list[TradeoffPoint]:
    """The chart's points: every finished variant that has a size, a p50 and an agreement.

    Args:
        variants: the run's variants (any backend, any kind).
        label: how to name a point; "{name}" is the variant's name (Compare prefixes the run).
        target: mark which points this target can run (core.reporting.targets), and flag
            those Vela leaves partly on the CPU; None: every point is runnable.
        arena_limit_kb: the `mcu` target's arena limit.
    """
    points = []
    for v in map(variant_of, variants):
        r = v.result
        if r.status != VariantStatus.DONE or not r.size_bytes or r.p50_ms is None:
            continue
        if r.top1_agreement_pct is None:
            continue
        ci = r.top1_agreement_ci95
        why: str | None = None
        flag: str | None = None
        if target is not None:
            why = exclusion(v, Target(target), arena_limit_kb=arena_limit_kb)
            if why is None and Target(target) in (Target.INTEGER_ONLY, Target.MCU):
                flag = cpu_fallback(v)
        points.append(
            TradeoffPoint(
                name=label.format(name=v.name),
                size_mb=float(r.size_bytes) / 1e6,
                p50_ms=r.p50_ms,
                agreement_pct=float(r.top1_agreement_pct),
                ci95=(float(ci[0]), float(ci[1])) if ci else None,
                n=r.n,
                verdict=verdict(v),
                runnable=why is None,
                note=why if why is not None else flag,
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
        r.status == VariantStatus.DONE
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


def _slower_than_float32(v: Variant, baseline: Variant | None) -> float | None:
    """How many times slower than float32 TFLite `v` is (> 1), or None when it is not slower
    or there is no baseline. From the paired timing blocks when the run has them: slower only
    when every block says so (the fastest block's ratio is still below 1), so timing noise
    between two equally fast variants never demotes one; else from the two p50s."""
    if v.name == BASELINE:
        return None
    speed = v.result.speedup or {}
    value = speed.get("value")
    if value is not None and speed.get("baseline") == BASELINE:
        high = speed.get("high")
        best = float(value if high is None else high)
        return 1.0 / float(value) if best < 1.0 else None
    if baseline is None or baseline.result.p50_ms is None or v.result.p50_ms is None:
        return None
    ratio = v.result.p50_ms / baseline.result.p50_ms
    return ratio if ratio > 1.0 else None


def _speed_words(v: Variant, baseline: Variant | None) -> str:
    """ "12.5× faster than float32 TFLite on the same runtime (vs the TensorFlow original: …)"."""
    if v.name == BASELINE:
        return f"it is the {BASELINE_LABEL} baseline"
    speed = v.result.speedup or {}
    value = speed.get("value")
    if value is not None and speed.get("baseline") == BASELINE:
        head = f"{times(float(value))} than {BASELINE_LABEL} on the same runtime"
    elif baseline is not None and baseline.result.p50_ms and v.result.p50_ms:
        head = (
            f"{times(baseline.result.p50_ms / v.result.p50_ms)} than {BASELINE_LABEL} "
            f"(p50 {v.result.p50_ms:.3g} vs {baseline.result.p50_ms:.3g} ms)"
        )
    else:
        return f"no {BASELINE_LABEL} timing to compare its speed with"
    original = (speed.get("vs_original") or {}).get("value")
    if original is not None:
        head += f" (vs {ORIGINAL_LABEL}: {times(float(original))})"
    return head


# The runtimes whose answers stand for a microcontroller's, most faithful first: TFLite-Micro
# itself, else LiteRT's reference kernels, which TFLite-Micro matches bit for bit.
MCU_RUNTIMES = ("tflm", "reference")

Figures = tuple[float, tuple[float, float] | None, int | None, str]


def _device_figures(v: Variant, runtimes: RuntimeMatrix | None, target: Target) -> Figures | None:
    """For the mcu target, a variant's agreement under TFLite-Micro or the reference kernels
    when the run measured it there (`--runtimes`): XNNPACK's answers are not the device's."""
    if target != Target.MCU or runtimes is None:
        return None
    for runtime in MCU_RUNTIMES:
        cell = runtimes.cell(v.name, runtime)
        if cell is not None and cell.agreement_pct is not None and cell.ci_low_pct is not None:
            ci = (float(cell.ci_low_pct), float(cell.ci_high_pct or 100.0))
            where = " under TFLite-Micro" if runtime == "tflm" else " under the reference kernels"
            return float(cell.agreement_pct), ci, cell.n, where
    return None


def _judged_figures(v: Variant, device: Figures | None = None) -> Figures:
    """The agreement, interval and n a variant is judged by: for a fix auto-fix derived, those
    of the images its search did not see (the images that chose a fix never vouch for it);
    else the target's own runtime when it was measured (`device`); else the run's."""
    held_out = v.held_out
    if held_out is not None:
        return (
            float(held_out.top1_agreement_pct),
            held_out.top1_agreement_ci95,
            held_out.n,
            " on the images its fix search did not see",
        )
    if device is not None:
        return device
    r = v.result
    return float(r.top1_agreement_pct or 0), r.top1_agreement_ci95, r.n, ""


def _passes(v: Variant, threshold_pct: float, rule: str, device: Figures | None = None) -> bool:
    """Whether `v` meets the threshold under the run's verdict rule (what its PASS says)."""
    pct, ci, _, _ = _judged_figures(v, device)
    return meets_threshold(pct, ci, threshold_pct, rule)


def _agreement_words(v: Variant, device: Figures | None = None) -> str:
    pct, ci, n, where = _judged_figures(v, device)
    bound = f", lower 95 % bound {float(ci[0]):.1f} %" if ci else ""
    return f"top-1 agreement {pct:.1f} %{bound}, n={n}{where}"


def listed_once(variants: Sequence[Variant]) -> tuple[list[Variant], list[dict[str, str]]]:
    """`variants` without a derived variant whose outputs equal its parent's (its pre-flight's
    `identical_to`) when that parent is among them: the same model for the user, listed once."""
    names = {v.name for v in variants}
    kept, dropped = [], []
    for v in variants:
        found = v.result.deployability
        parent = found.identical_to if found is not None else None
        if parent is not None and parent in names:
            dropped.append({"variant": v.name, "same_as": parent})
        else:
            kept.append(v)
    return kept, dropped


def recommendation(
    report: RunReport | Mapping[str, Any],
    target: str | None = None,
    *,
    arena_limit_kb: float | None = None,
) -> dict[str, Any]:
    """The recommended variant of a report for one target, with the rule, the runner-up and the
    reason.

    Rule (`pick_rule_text`): among judged variants the target can run that pass the run's
    verdict, the smallest not slower than float32 TFLite, then the fastest; a slower one only
    when no faster one passes, and the reason then says how much slower. A derived variant
    whose outputs equal its parent's is listed once (as the parent). When nothing passes,
    `variant` is None and `closest` names the judged variant with the highest lower bound.

    Args:
        report: the run's report.
        target: `cpu`, `integer-only`, `mcu` or `gpu`; None: the run's `--target` (else cpu).
        arena_limit_kb: the largest TFLite-Micro arena the `mcu` target allows; None: the
            run's `--arena-kb` (else no limit).

    Returns:
        {"variant", "rule", "runner_up", "reason", "closest", "target", "excluded",
        "listed_once", "slower_than_float32"}; names are variant names; `excluded` lists
        {"variant", "reason"} for each judged variant the target cannot run, `listed_once`
        {"variant", "same_as"}; `slower_than_float32` is the words said when the pick is slower.
    """
    typed = report_from(report)
    chosen = Target(target or typed.options.get("target") or DEFAULT_TARGET)
    if arena_limit_kb is None and typed.options.get("arena_kb") is not None:
        arena_limit_kb = float(typed.options["arena_kb"])
    threshold = typed.threshold_pct
    rule = pick_rule_text(threshold, verdict=typed.verdict_rule, target=chosen)
    out: dict[str, Any] = {
        "variant": None,
        "rule": rule,
        "runner_up": None,
        "reason": "",
        "closest": None,
        "target": str(chosen),
        "excluded": [],
        "listed_once": [],
        "slower_than_float32": None,
    }
    if chosen == Target.GPU:
        out["reason"] = GPU_NOT_EVALUATED
        return out
    judged_ones = [v for v in typed.variants if judged(v)]
    runnable = []
    for v in judged_ones:
        why = exclusion(v, chosen, arena_limit_kb=arena_limit_kb)
        if why is None:
            runnable.append(v)
        else:
            out["excluded"].append({"variant": v.name, "reason": why})
    candidates, out["listed_once"] = listed_once(runnable)
    baseline = typed.variant(BASELINE)
    device = {v.name: _device_figures(v, typed.runtimes, chosen) for v in candidates}
    qualified = [v for v in candidates if _passes(v, threshold, typed.verdict_rule, device[v.name])]
    not_slower = sorted(
        (v for v in qualified if _slower_than_float32(v, baseline) is None),
        key=_smallest_then_fastest,
    )
    slower = sorted(
        (v for v in qualified if _slower_than_float32(v, baseline) is not None),
        key=_smallest_then_fastest,
    )
    ranked = not_slower + slower
    if ranked:
        pick = ranked[0]
        runner_up = ranked[1] if len(ranked) > 1 else None
        reason = (
            f"{short_name(pick.name)}: {_agreement_words(pick, device[pick.name])}, at {_mb(pick)}; "
            f"{_speed_words(pick, baseline)}"
        )
        factor = _slower_than_float32(pick, baseline)
        if factor is not None:
            out["slower_than_float32"] = (
                f"{short_name(pick.name)} is {factor:.1f}× slower than {BASELINE_LABEL} on the "
                "same runtime: no variant at least as fast passes"
            )
            reason += f". Note: {out['slower_than_float32']}"
        fallback = cpu_fallback(pick) if chosen == Target.INTEGER_ONLY else None
        if fallback:
            reason += f". {fallback}"
        if runner_up is not None:
            reason += f"; next: {short_name(runner_up.name)} at {_mb(runner_up)}"
        out.update(
            variant=pick.name,
            runner_up=None if runner_up is None else runner_up.name,
            reason=reason,
        )
        return out
    if not candidates:
        out["reason"] = (
            f"no variant the {chosen} target can run was judged"
            if judged_ones
            else "no variant was judged (none finished with a verdict)"
        )
        return out
    closest = min(candidates, key=lambda v: (-_lower(v), *_smallest_then_fastest(v)))
    out["reason"] = (
        f"no variant passes the run's verdict at {threshold:g} %; closest: "
        f"{short_name(closest.name)} at {_lower(closest):.1f} % (n={_n(closest)}), "
        "its lower 95 % bound"
    )
    out["closest"] = closest.name
    return out


def recommendations(report: RunReport | Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The recommendation for every target, keyed by target name."""
    return {str(t): recommendation(report, str(t)) for t in Target}
