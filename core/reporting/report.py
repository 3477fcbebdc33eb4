"""report.json (DESIGN §7): its variant entries, the verdict, the CLI table and the exit status."""

from __future__ import annotations

import dataclasses
import math
import platform
import sys
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from core.metrics.agreement import AccuracyBaseline
from core.reporting.runmodel import SCHEMA_VERSION, VERDICT_POINT, RunReport, report_from
from core.reporting.sections.fixes import CandidateStatus
from core.reporting.sections.flips import FlipMatrix
from core.reporting.sections.variant import ROLE_PIVOT, ROLE_SELECTED, Variant, VariantIdentity
from core.types import (
    FINISHED_STATUSES,
    Agreement,
    Mode,
    RunStatus,
    VariantSpec,
    VariantStatus,
    short_name,
)

__all__ = ["ROLE_PIVOT", "ROLE_SELECTED", "SCHEMA_VERSION", "VERDICT_POINT"]


def environment(*, threads: int | None) -> dict[str, Any]:
    """Library versions, CPU and thread count; imports TF, so call it in the worker only."""
    from importlib.metadata import PackageNotFoundError, version

    import numpy as np

    from core.metrics.latency import host_cpus, usable_cpus

    def installed(name: str) -> str | None:
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    return {
        "tensorflow": installed("tensorflow-cpu") or installed("tensorflow"),
        "litert": installed("ai-edge-litert"),
        "keras": installed("keras"),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": host_cpus(),  # the host's CPUs
        "usable_cpus": usable_cpus(),  # the CPUs this process may run on (affinity, cgroup)
        "threads": threads,
    }


def cpu_name() -> str:
    """The CPU model name (Linux /proc/cpuinfo, macOS sysctl, else what platform reports)."""
    from core.posix import cpu_name as posix_cpu_name

    return posix_cpu_name()


PIVOT_SPEC = VariantSpec(Mode.FLOAT32)  # the converter's float32 TFLite, `float32.tflite`


def with_pivot(specs: list[VariantSpec]) -> list[VariantSpec]:
    """The job's variants plus the float32 pivot when a quantized variant needs it.

    An added pivot is listed after the user's variants (the pipeline still runs it first, so
    its outputs exist before any variant is split).
    """
    if any(s == PIVOT_SPEC for s in specs) or all(s.mode is Mode.FLOAT32 for s in specs):
        return specs
    return [*specs, PIVOT_SPEC]


def pivot_name(specs: list[VariantSpec]) -> str | None:
    """The pivot's variant name when some variant is quantized, else None (nothing to split)."""
    if all(s.mode is Mode.FLOAT32 for s in specs) or PIVOT_SPEC not in specs:
        return None
    return PIVOT_SPEC.name


def variant_of(entry: Variant | Mapping[str, Any]) -> Variant:
    """The typed variant of a report.json variant entry (the entry itself when typed)."""
    return entry if isinstance(entry, Variant) else Variant.from_dict(entry)


def is_pivot_only(variant: Variant | Mapping[str, Any]) -> bool:
    """True for a pivot the user did not select: shown, never judged."""
    return variant_of(variant).is_pivot


def judged_variants(variants: Sequence[Variant]) -> list[Variant]:
    """The variants a verdict, the exit status and "N of M meet the threshold" count."""
    return [v for v in variants if not v.is_pivot]


def display_name(report: RunReport | Mapping[str, Any], variant: Variant) -> str:
    """A variant's name as listed: `float32 (pivot)` for the run's pivot."""
    return report_from(report).display_name(variant)


def parent_name(spec: VariantSpec) -> str | None:
    """The variant a per-layer override or equalization derives from (`int8` for
    `int8:keep=conv2d`), else None."""
    if not spec.has_overrides:
        return None
    return spec.without_overrides().name


# A variant entry's `diagnosis_on_request`: a finished variant that flipped no image is not
# diagnosed during its run (the diagnosis would explain no flip, and cost every run seconds);
# the Layers page or `export` asks for it, which re-opens the run (core.jobs.rescore).
DIAGNOSIS_ON_REQUEST = "diagnosis_on_request"
ON_REQUEST_WAITING = "waiting"  # flipped no image; not diagnosed yet
ON_REQUEST_ASKED = "asked"  # asked for: the re-opened run diagnoses it


def awaiting_diagnosis(report: Mapping[str, Any]) -> list[str]:
    """The finished variants whose per-layer diagnosis waits to be asked for, in run order."""
    return [
        str(v["name"])
        for v in report.get("variants") or []
        if v.get(DIAGNOSIS_ON_REQUEST) == ON_REQUEST_WAITING
        and v.get("status") == VariantStatus.DONE
        and not v.get("diagnosis")
    ]


def chosen_step(steps: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The auto-fix step a derived variant is made from: the first kept step that reaches the
    best agreement of the path. Layers kept after it only held agreement with a lower KL, which
    does not earn their bytes (on the MobileNetV2 demo: four more layers, +27 % size, for a KL
    0.0009 lower). An older report's steps, from before a step could be tried and not kept,
    were all kept."""
    kept = [s for s in steps if s.get("kept", True)]
    if not kept:
        return None
    best = max(float(s["agreement_pct"]) for s in kept)
    return next(s for s in kept if float(s["agreement_pct"]) == best)


def pending_variant(
    spec: VariantSpec, *, role: str = ROLE_SELECTED, parent: str | None = None
) -> dict[str, Any]:
    """A variant entry before its work starts: every metric null (`parent` for a derived one:
    given, e.g. `int8` for the fix ladder's `int8_q:int16=...`, or read from the name)."""
    identity = replace(
        VariantIdentity.from_spec(spec, role=role), parent=parent or parent_name(spec)
    )
    return Variant(identity).to_dict()


def counted(n: int, noun: str) -> str:
    """`1 image`, `2 images`: a count with its noun in the right number."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def reduction_pct(size: int, baseline: int | None) -> float | None:
    """How much smaller `size` is than `baseline`, in percent (negative when larger)."""
    if not baseline:
        return None
    return 100.0 * (1.0 - size / baseline)


# The original must beat "always answer the labels' majority class" at this one-sided binomial
# p-value, or agreement with it means nothing: one wrong preset (e.g. [0, 255] pixels into a
# [-1, 1] model) lands an original there, a working one on a few dozen images never.
CHANCE_P_VALUE = 1e-3


def accuracy_baseline_of(reference: Mapping[str, Any] | None) -> AccuracyBaseline | None:
    """The majority-class test the reference stage stored in report.json's `reference`
    (None without labels, and in reports from before it was stored)."""
    stored = (reference or {}).get("accuracy_baseline")
    return AccuracyBaseline.from_dict(stored) if stored else None


def near_chance(reference: Mapping[str, Any] | None) -> bool:
    """True when labels exist and the original's accuracy is not significantly above the
    labels' majority-class rate (one-sided binomial test, p >= 1e-3).

    The one rule behind the pipeline's warning, the verdict, the store's no-verdict flag and
    every page's warning; `reference` is report.json's `reference` section.
    """
    baseline = accuracy_baseline_of(reference)
    return baseline is not None and not baseline.p_value < CHANCE_P_VALUE


def no_verdict_reason(reference: Mapping[str, Any] | None) -> str | None:
    """Why no variant can pass when the original is near chance (`near_chance`), else None."""
    baseline = accuracy_baseline_of(reference)
    if baseline is None or not near_chance(reference):
        return None
    return (
        f"the original is {baseline.accuracy_pct:.1f} % accurate, not clearly above always "
        f"answering the {baseline.text()} (one-sided binomial p = {baseline.p_value:.2g}): "
        "check the preprocessing preset or the labels"
    )


def output_kind_text(reference: Mapping[str, Any]) -> str:
    """How the original's outputs are read, from report.json's `reference` section."""
    probabilities = bool(reference.get("outputs_probabilities"))
    if reference.get("output_columns") == 1:
        if probabilities:
            return "one sigmoid probability p, read as the classes [1 − p, p]"
        return "one logit x, read as the classes [1 − sigmoid(x), sigmoid(x)]"
    return "probabilities" if probabilities else "logits (softmaxed)"


# How a variant is judged against the threshold (`--verdict`): its point estimate of top-1
# agreement, or the lower end of its 95 % Wilson interval (a PASS that survives sampling noise).
VERDICT_LOWER_BOUND = "lower-bound"
VERDICT_RULES = (VERDICT_POINT, VERDICT_LOWER_BOUND)


def verdict_rule_text(rule: str, threshold_pct: float, preset: str | None = None) -> str:
    """The verdict rule in words, for the CLI, the cards and report.html; with the preset the
    images were preprocessed with (a wrong one makes every verdict meaningless)."""
    if rule == VERDICT_LOWER_BOUND:
        text = f"PASS when the lower 95 % Wilson bound of top-1 agreement is at least {threshold_pct:g} %"
    else:
        text = f"PASS when top-1 agreement (the point estimate) is at least {threshold_pct:g} %"
    return f"{text}; images preprocessed with preset {preset}" if preset else text


def meets_threshold(
    agreement_pct: float,
    ci95: tuple[float, float] | list[float] | None,
    threshold_pct: float,
    rule: str,
) -> bool:
    """Whether a variant's agreement meets the threshold under `rule` (point or lower-bound)."""
    if rule == VERDICT_LOWER_BOUND:
        return ci95 is not None and float(ci95[0]) >= threshold_pct
    return agreement_pct >= threshold_pct


def samples_needed(threshold_pct: float) -> int | None:
    """The fewest images whose lower 95 % Wilson bound can reach `threshold_pct` at 100 % agreement.

    At k = n the Wilson lower bound is n / (n + z²), so n >= z² t / (1 − t); the closed form is
    then checked against `wilson_interval` itself so the two can never disagree by one.
    None when no n suffices (a threshold of 100 %: the bound never reaches 1).
    """
    from core.metrics.agreement import Z95, wilson_interval

    t = threshold_pct / 100.0
    if t <= 0:
        return 0
    if t >= 1:
        return None
    n = max(1, math.ceil(Z95 * Z95 * t / (1.0 - t)))
    # Compared in percent, exactly as `meets_threshold` compares the stored interval.
    while n > 1 and 100.0 * wilson_interval(n - 1, n - 1)[0] >= threshold_pct:
        n -= 1
    while 100.0 * wilson_interval(n, n)[0] < threshold_pct:
        n += 1
    return n


def too_few_samples_note(n: int | None, threshold_pct: float) -> str | None:
    """A one-line warning when n images cannot clear the threshold's lower bound, else None."""
    if n is None:
        return None
    needed = samples_needed(threshold_pct)
    if needed is None:
        return (
            f"the lower 95 % bound never reaches {threshold_pct:g} %, whatever the number of "
            "images; use a threshold below 100 % with --verdict lower-bound"
        )
    if n >= needed:
        return None
    return (
        f"{counted(n, 'image')} {'is' if n == 1 else 'are'} too few for the lower 95 % bound to "
        f"reach {threshold_pct:g} % even at "
        f"100 % agreement; at least {needed} are needed"
    )


def fail_reason(variant: Variant, threshold_pct: float, rule: str) -> str | None:
    """Why a finished, judged variant fails under `rule`, in one line; None when it passes."""
    result = variant.result
    if result.status != VariantStatus.DONE or result.passed is not False or result.verdict_reason:
        return None
    pct = result.top1_agreement_pct
    ci = result.top1_agreement_ci95
    if rule == VERDICT_LOWER_BOUND and ci:
        return (
            f"lower 95 % bound {float(ci[0]):.1f} % is below {threshold_pct:g} % "
            f"(agreement {float(pct or 0):.2f} %, n={result.n})"
        )
    return f"agreement {float(pct or 0):.2f} % is below {threshold_pct:g} %"


def finished_variant(
    entry: Mapping[str, Any],
    *,
    size_bytes: int,
    reference_size: int,
    agreement: Agreement,
    reference: Mapping[str, Any],
    min_agreement_pct: float,
    conversion_seconds: float,
    conversion_cached: bool,
    conversion_route: str,
    select_tf_ops_used: tuple[str, ...],
    softmax_applied: bool,
    io: dict[str, Any],
    warnings: list[str],
    disagreement_split: dict[str, int] | None = None,
    verdict_rule: str = VERDICT_POINT,
) -> dict[str, Any]:
    """Fill a variant entry with its comparison results and verdict (latency comes later).

    `passed` follows `verdict_rule` (the point estimate or the lower 95 % bound against
    `min_agreement_pct`). Agreement with an original that is near chance (`near_chance` of
    `reference`, report.json's section) means nothing (both models agree on garbage), so such
    a variant never passes: `passed` is False and `verdict_reason` says why. A pivot the user did not select is never judged: `passed` stays
    None. `n_needed` is the image count the lower bound would need to reach the threshold at
    100 % agreement, when n is below it (else None).
    """
    typed = Variant.from_dict(entry)
    pivot_only = typed.is_pivot
    reason = None if pivot_only else no_verdict_reason(reference)
    passed = (
        None
        if pivot_only
        else reason is None
        and meets_threshold(
            agreement.top1_agreement_pct,
            agreement.top1_agreement_ci95,
            min_agreement_pct,
            verdict_rule,
        )
    )
    # Field by field, not `to_dict()`: that copies the dense C x C flip matrix into lists.
    metrics = {
        f.name: getattr(agreement, f.name)
        for f in dataclasses.fields(agreement)
        if f.name != "labelled_n"
    }
    metrics["flip_matrix"] = FlipMatrix.from_rows(agreement.flip_matrix)
    done = typed.with_result(
        **metrics,
        status=VariantStatus.DONE,
        error=None,
        size_bytes=size_bytes,
        size_reduction_pct=reduction_pct(size_bytes, reference_size),
        # Filled in by the timing phase, once no conversion competes for the cores.
        latency_ms=None,
        speedup_vs_reference=None,
        speedup=None,
        conversion_seconds=conversion_seconds,
        conversion_cached=conversion_cached,
        conversion_route=conversion_route,
        select_tf_ops_used=tuple(select_tf_ops_used),
        softmax_applied=softmax_applied,
        io=io,
        warnings=tuple(warnings),
        disagreement_split=disagreement_split,
        passed=passed,
        verdict_reason=reason,
        n_needed=_n_needed(agreement.n, min_agreement_pct),
    )
    return done.to_dict()


def _n_needed(n: int, threshold_pct: float) -> int | None:
    needed = samples_needed(threshold_pct)
    return needed if needed is not None and n < needed else None


def size_change_pct(reduction_pct: float | None) -> float | None:
    """A size reduction as a signed change: 75 % smaller is -75.0, 5 % larger is +5.0."""
    return None if reduction_pct is None else -float(reduction_pct)


def size_change_label(reduction_pct: float) -> str:
    """A size reduction as the change a reader expects: "−86.1 %" smaller, "+5.0 %" larger."""
    change = -float(reduction_pct)
    if round(change, 1) == 0.0:
        return "±0.0 %"
    return f"{change:+.1f} %".replace("-", "−")


def exit_status(report: RunReport | Mapping[str, Any]) -> int:
    """0: every judged variant meets the threshold; 1: some is below it or did not finish.

    The float32 pivot QuantLens added on its own is not judged, so it never decides the status.
    """
    variants = judged_variants(report_from(report).variants)
    if variants and all(v.result.passed is True for v in variants):
        return 0
    return 1


def _fmt(value: float | None, pattern: str, missing: str = "-") -> str:
    return missing if value is None else pattern.format(value)


def format_mb(size_bytes: int | None) -> str:
    return "-" if size_bytes is None else f"{size_bytes / 1e6:.2f} MB"


NO_VERDICT = "NO VERDICT"
PIVOT = "PIVOT"


def verdict(variant: Variant | Mapping[str, Any]) -> str:
    """PASS / FAIL / NO VERDICT for a finished variant, else its status in capitals (CRASHED, ...)."""
    typed = variant_of(variant)
    result = typed.result
    if result.status != VariantStatus.DONE:
        return result.status.upper()
    if typed.is_pivot:
        return PIVOT
    if result.verdict_reason:
        return NO_VERDICT
    return "PASS" if result.passed is True else "FAIL"


def format_table(report: RunReport | Mapping[str, Any]) -> str:
    """The CLI's human table: one row per variant, then each failed variant's reason."""
    report = report_from(report)
    ref = report.reference
    threshold = report.threshold_pct
    header = [
        "variant",
        "size",
        "reduction",
        "top-1 agreement (95% CI)",
        "accuracy",
        "p50 latency",
        "verdict",
    ]
    rows = [
        [
            "original",
            format_mb(ref.get("size_bytes")),
            "",
            "",
            _fmt(ref.get("accuracy_pct"), "{:.1f}%"),
            _fmt((ref.get("latency_ms") or {}).get("p50"), "{:.2f} ms"),
            "",
        ]
    ]
    for v in report.variants:
        r = v.result
        ci = r.top1_agreement_ci95
        agreement = (
            f"{r.top1_agreement_pct:.2f}% [{ci[0]:.1f}, {ci[1]:.1f}] n={r.n}"
            if r.top1_agreement_pct is not None and ci
            else "-"
        )
        rows.append(
            [
                report.display_name(v),
                format_mb(r.size_bytes),
                _fmt(r.size_reduction_pct, "{:.1f}%"),
                agreement,
                _fmt(r.tflite_accuracy_pct, "{:.1f}%"),
                _fmt(r.p50_ms, "{:.2f} ms"),
                verdict(v),
            ]
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    data = report.dataset
    lines.append("")
    lines.append(
        f"{counted(data['num_samples'], 'image')} compared, {data['num_skipped']} skipped; "
        f"threshold {threshold:g}% top-1 agreement; {report.environment.get('threads') or 'all'} threads"
    )
    rule = report.verdict_rule
    preset = report.preprocessing.get("preset")
    lines.append(f"verdict: {verdict_rule_text(rule, threshold, preset)}")
    for v in report.variants:
        r = v.result
        shown = short_name(v.name)
        if r.disagreement_split and r.disagreements:
            lines.append(f"{shown}: {split_sentence(r.disagreement_split)}")
        if r.error:
            lines.append(f"{shown}: {r.error}")
        elif r.verdict_reason:
            lines.append(f"{shown}: {NO_VERDICT} — {r.verdict_reason}")
        elif reason := fail_reason(v, threshold, rule):
            lines.append(f"{shown}: FAIL — {reason}")
        for warning in r.warnings:
            lines.append(f"warning: {shown}: {warning}")
        causes = v.causes
        for line in causes.lines() if causes is not None else ():
            lines.append(f"cause: {shown}: {line}")
        lines.extend(fix_lines(v))
        nothing_to_fix = (v.extra.get("auto_fix") or {}).get("nothing_to_fix")
        if nothing_to_fix:
            lines.append(f"auto-fix: {nothing_to_fix}")
    latency_warnings: list[tuple[str, str | None]] = [("original", ref.get("latency_warning"))]
    latency_warnings += [(short_name(v.name), v.result.latency_warning) for v in report.variants]
    for who, latency_warning in latency_warnings:
        if latency_warning:
            lines.append(f"warning: {who} latency: {latency_warning}")
    for note in sorted(
        {note for n in sample_counts(report) if (note := too_few_samples_note(n, threshold))}
    ):
        lines.append(f"note: {note}")
    for warning in report.warnings:
        lines.append(f"warning: {warning}")
    from core.reporting.targets import deployability_lines

    lines.extend(deployability_lines(report.variants))
    lines.extend(flip_hunt_lines(report.variants))
    lines.extend(recommendation_lines(report.recommendation))
    return "\n".join(lines)


def fix_lines(v: Variant) -> list[str]:
    """The fix ladder's search on a parent (what it tried, on how many images, what it chose)
    and a derived fix's verdict on the images that search did not see."""
    shown = short_name(v.name)
    lines = []
    search = v.fix_search
    if search is not None:
        measured = sum(c.status == CandidateStatus.MEASURED for c in search.candidates)
        cut = ", cut short by the budget" if search.truncated else ""
        chose = (
            f"chose {short_name(search.chosen)}"
            + ("" if search.chosen_meets_bar else " (best so far; below the bar)")
            if search.chosen
            else "nothing beat it"
        )
        lines.append(
            f"auto-fix: {shown}: {measured} candidates measured on "
            f"{counted(len(search.selected_rows), 'image')} ({search.evaluations} of "
            f"{search.budget} evaluations{cut}); {chose}"
        )
    held_out = v.held_out
    if held_out is not None:
        low, high = held_out.top1_agreement_ci95
        lines.append(
            f"{shown}: verdict on the {counted(held_out.n, 'image')} its fix search did not "
            f"see: {held_out.top1_agreement_pct:.2f} % [{low:.1f}, {high:.1f}] "
            f"{'PASS' if held_out.passed else 'FAIL'}"
        )
    return lines


def flip_hunt_line(p: Mapping[str, Any]) -> str:
    """One perturbation's figures in words: agreement on the counted images, with n, and the
    original's own flips beside it."""
    ci = p.get("ci95")
    if p.get("agreement_pct") is None or ci is None:
        agreement = "no image left to count"
    else:
        agreement = (
            f"{float(p['agreement_pct']):.1f} % agree [{float(ci[0]):.1f}, {float(ci[1]):.1f}] "
            f"n={p['counted']}"
        )
    return (
        f"{p['perturbation']}: {agreement}; {counted(int(p['new_flips']), 'new flip')}; the "
        "original changed "
        f"its own answer on {p['original_changed']} of {p['n']}"
    )


def flip_hunt_lines(variants: Sequence[Variant]) -> list[str]:
    """The flip hunt as the CLI prints it: per variant, one line per perturbation."""
    lines = []
    for v in variants:
        for p in v.result.flip_hunt or ():
            lines.append(f"flip hunt: {short_name(v.name)}: {flip_hunt_line(p)}")
    return lines


def split_sentence(split: Mapping[str, int]) -> str:
    """The three-way split in words, e.g. "4 disagreements: 1 conversion-caused, 3 ..."."""
    conversion, quantization = int(split["conversion"]), int(split["quantization"])
    total = conversion + quantization
    return (
        f"{total} disagreement{'' if total == 1 else 's'}: {conversion} conversion-caused "
        f"(the float32 TFLite already disagrees), {quantization} quantization-caused"
    )


def verdict_rule_of(report: RunReport | Mapping[str, Any]) -> str:
    """The verdict rule a report was judged by; reports older than `--verdict` used the point."""
    return report_from(report).verdict_rule


def sample_counts(report: RunReport | Mapping[str, Any]) -> list[int]:
    """The distinct n of the judged variants (one per run, unless a variant saw fewer images)."""
    return sorted(
        {int(v.result.n) for v in report_from(report).variants if isinstance(v.result.n, int)}
    )


def recommendation_lines(rec: Mapping[str, Any] | None) -> list[str]:
    """The pick and its rule in words, as the CLI prints them (nothing for older reports)."""
    if not rec:
        return []
    if rec.get("variant"):
        head = f"recommended: {short_name(rec['variant'])}"
        if rec.get("runner_up"):
            head += f" (runner-up: {short_name(rec['runner_up'])})"
    else:
        head = "recommended: none"
    if rec.get("target"):
        head += f" for target {rec['target']}"
    lines = [head, f"  rule: {rec['rule']}", f"  why: {rec['reason']}"]
    for entry in rec.get("excluded") or ():
        lines.append(f"  excluded: {short_name(entry['variant'])}: {entry['reason']}")
    for entry in rec.get("listed_once") or ():
        lines.append(
            f"  listed once: {short_name(entry['variant'])} has the outputs of "
            f"{short_name(entry['same_as'])}"
        )
    return lines


def run_status(report: RunReport | Mapping[str, Any]) -> RunStatus:
    """The run's own status: done when every variant ended, whatever each variant's outcome."""
    statuses = {v.status for v in report_from(report).variants}
    return RunStatus.DONE if statuses <= FINISHED_STATUSES else RunStatus.RUNNING
