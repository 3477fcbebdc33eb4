"""Render a run directory as one self-contained report.html that opens offline."""

from __future__ import annotations

import base64
import csv
import heapq
import html
import math
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from core.inputs import rundir
from core.inputs.paths import resolve_inside
from core.metrics.latency import tail_latency
from core.reporting.calibration import calibration_line
from core.reporting.report import (
    NO_VERDICT,
    PIVOT,
    accuracy_baseline_of,
    display_name,
    fail_reason,
    is_pivot_only,
    judged_variants,
    no_verdict_reason,
    output_kind_text,
    sample_counts,
    size_change_label,
    too_few_samples_note,
    verdict_rule_of,
    verdict_rule_text,
)
from core.reporting.runmodel import RunReport, read_report
from core.reporting.sections.variant import Variant
from core.reporting.speedup import BASELINE_LABEL, speedup_lines
from core.types import VariantStatus, short_name

THUMB_PX = 96
MAX_GALLERY = 12
MAX_SKIPPED_LISTED = 20
# Images bigger than this are not opened for a thumbnail (the report must stay quick to build).
MAX_THUMB_SOURCE_BYTES = 20_000_000

# The plotly config every chart uses: no logo (it links to plotly.com), no cloud export.
_PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 24px auto; max-width: 1200px; padding: 0 16px; color: #1f2328;
       overflow-wrap: break-word; }
h1 { font-size: 1.6em; margin-bottom: 0.1em; } h2 { margin-top: 1.6em; border-bottom: 1px solid
#d0d7de; padding-bottom: 0.2em; } h3 { margin-bottom: 0.3em; }
.sub { color: #57606a; margin-top: 0; }
table { border-collapse: collapse; font-size: 0.92em; margin: 0.5em 0; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.pass { color: #1e8e3e; font-weight: 700; } .fail { color: #c62828; font-weight: 700; }
.na { color: #57606a; } .err { color: #c62828; font-family: monospace; font-size: 0.9em; }
.warn { background: #fff8c5; border: 1px solid #d4a72c; padding: 8px 12px; border-radius: 6px; }
.banner { padding: 10px 14px; border-radius: 6px; font-size: 1.1em; margin: 0.8em 0; }
.banner.pass { background: #e6f4ea; border: 1px solid #1e8e3e; }
.banner.fail { background: #fdecea; border: 1px solid #c62828; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid #d0d7de; border-radius: 6px; padding: 6px; width: 180px;
        font-size: 0.82em; }
.card img, .card .ph { width: 96px; height: 96px; image-rendering: pixelated; display: block;
        margin: 0 auto 4px auto; object-fit: contain; background: #f6f8fa; }
.card .ph { display: flex; align-items: center; justify-content: center; color: #57606a;
        border: 1px dashed #d0d7de; text-align: center; font-size: 0.8em; }
.card .path { color: #57606a; word-break: break-all; }
.card .cause { display: inline-block; padding: 0 6px; border-radius: 8px; background: #fff1e5; color: #953800; font-size: 12px; }
pre { background: #f6f8fa; padding: 10px; overflow-x: auto; white-space: pre-wrap;
      word-break: break-all; }
.wide { overflow-x: auto; }
/* A long variant name (many layers kept in float) wraps inside its cell instead of widening
   the table past the page. */
#verdict td:first-child { overflow-wrap: anywhere; min-width: 10em; }
.chart { margin: 0.5em 0 1.5em 0; overflow-x: auto; }
"""


def render_report_html(run_dir: Path, *, name: str | None = None) -> str:
    """Build the self-contained HTML report of a run directory.

    Args:
        run_dir: a run directory holding `report.json` (plus samples.csv and
            `<variant>.samples.csv` for the disagreement gallery, when present).
        name: the run name to show; defaults to `report["run"]["name"]` (the store may hold a
            newer name after a rename).

    Returns:
        One HTML document: plotly.js inlined once, images as data URIs, no external URL.

    Raises:
        QuantLensError: report.json is missing or not valid JSON.
    """
    run_dir = Path(run_dir)
    report = read_report(run_dir)
    title_name = name if name is not None else (report.run.name or report.run.id)
    variants = list(report.variants)
    threshold = report.threshold_pct

    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>QuantLens report — {_e(title_name)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>QuantLens report — {_e(title_name)}</h1>",
        _subtitle(report),
        _verdict_banner(judged_variants(variants), threshold),
        _chance_warning(report),
        "<h2>Verdict per variant</h2>",
        _verdict_table(report, variants, threshold),
        _verdict_rule_notes(report, threshold),
        "<h2>Recommendation</h2>",
        _recommendation_section(report),
        _causes_section(variants),
        _reference_table(report),
        "<h2>Speed-up</h2>",
        _speedup_table(report, variants),
        _runtime_section(report),
        "<h2>Targets and deployability</h2>",
        _targets_section(report, variants),
        _flip_hunt_section(variants),
        "<h2>Charts</h2>",
        _charts(report, variants, threshold),
        _sweep_statement(report),
        "<h2>Top disagreements</h2>",
        _galleries(run_dir, report, variants),
        "<h2>Data set</h2>",
        _dataset_section(report),
        "<h2>Environment</h2>",
        _environment_table(report),
        "<h2>Reproduce this run</h2>",
        _command_section(report),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def write_report_html(run_dir: Path, *, name: str | None = None) -> Path:
    """Render the report and write it atomically to `<run_dir>/report.html`.

    Returns:
        The path of the written file.

    Raises:
        QuantLensError: report.json is missing or not valid JSON.
    """
    text = render_report_html(run_dir, name=name)
    path = Path(run_dir) / rundir.REPORT_HTML
    rundir.write_atomic(path, text.encode("utf-8"))
    return path


# -- reading -------------------------------------------------------------------------------------


# -- formatting ----------------------------------------------------------------------------------


def _e(value: Any) -> str:
    """HTML-escape any value; user text (names, paths, errors) is always shown as text."""
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _fmt(value: Any, spec: str = ".2f", unit: str = "") -> str:
    f = _num(value)
    return '<span class="na">—</span>' if f is None else f"{f:{spec}}{unit}"


def _class_label(report: RunReport, index: Any) -> str:
    names = (report.get("dataset") or {}).get("class_names") or []
    try:
        i = int(index)
    except (TypeError, ValueError):
        return str(index)
    if 0 <= i < len(names):
        return f"{names[i]} ({i})"
    return str(i)


def _size_change(reduction_pct: float | None) -> str:
    """The size change vs the original, signed as a reader expects; a larger model in red."""
    if reduction_pct is None:
        return '<span class="na">—</span>'
    label = size_change_label(reduction_pct)
    return f'<span class="fail">{label}</span>' if label.startswith("+") else label


def _verdict(variant: Variant, threshold: float) -> str:
    if is_pivot_only(variant):
        return (
            f'<span class="na" title="splits the quantized variants\' disagreements">{PIVOT}</span>'
        )
    if variant.get("verdict_reason"):
        return f'<span class="na" title="{_e(variant["verdict_reason"])}">{NO_VERDICT}</span>'
    passed = variant.get("passed")
    if passed is None and variant.get("status") == VariantStatus.DONE:
        agreement = _num(variant.get("top1_agreement_pct"))
        passed = None if agreement is None else agreement >= threshold
    if passed is True:
        return '<span class="pass">PASS</span>'
    if passed is False:
        return '<span class="fail">FAIL</span>'
    return '<span class="na">—</span>'


# -- sections ------------------------------------------------------------------------------------


def local_time(iso: object) -> str:
    """An ISO 8601 time in this machine's local time with its UTC offset, as the dashboard
    shows local times: "2025-01-02 04:04:05 (UTC+01:00)"; the text itself if unparsable."""
    from datetime import datetime

    try:
        moment = datetime.fromisoformat(str(iso)).astimezone()
    except ValueError:
        return str(iso)
    offset = moment.strftime("%z")  # "+0100"
    return f"{moment:%Y-%m-%d %H:%M:%S} (UTC{offset[:3]}:{offset[3:]})"


def _subtitle(report: RunReport) -> str:
    run = report.get("run") or {}
    ref = report.get("reference") or {}
    dataset = report.get("dataset") or {}
    bits = [
        f"run <code>{_e(run.get('id'))}</code>" if run.get("id") else "",
        f"created {_e(local_time(run.get('created')))}" if run.get("created") else "",
        f"status {_e(run.get('status'))}" if run.get("status") else "",
        f"model <code>{_e(ref.get('path'))}</code>" if ref.get("path") else "",
        f"data <code>{_e(dataset.get('path'))}</code>" if dataset.get("path") else "",
        "<strong>trusted mode was on</strong>" if run.get("trusted") else "",
    ]
    return '<p class="sub">' + " · ".join(b for b in bits if b) + "</p>"


def _verdict_banner(variants: list[Variant], threshold: float) -> str:
    if not variants:
        return '<p class="banner fail">No variant was run.</p>'
    failing = [
        v.name for v in variants if v.result.passed is not True or v.status != VariantStatus.DONE
    ]
    if not failing:
        return (
            f'<p class="banner pass">Every variant meets the {threshold:g} % top-1 agreement '
            "threshold.</p>"
        )
    return (
        f'<p class="banner fail">{len(failing)} of {len(variants)} variant(s) do not meet the '
        f"{threshold:g} % threshold or did not finish: {_e(', '.join(failing))}.</p>"
    )


def _verdict_rule_notes(report: RunReport, threshold: float) -> str:
    """The verdict rule in words, each failing variant's reason and any too-small-n note."""
    rule = verdict_rule_of(report)
    preset = report.preprocessing.get("preset")
    lines = [f"Verdict: {_e(verdict_rule_text(rule, threshold, preset))}."]
    for v in report.variants:
        if reason := fail_reason(v, threshold, rule):
            lines.append(f"{_e(short_name(v.name))}: FAIL — {_e(reason)}.")
    for n in sample_counts(report):
        note = too_few_samples_note(n, threshold)
        if note:
            lines.append(f"<strong>Too few images:</strong> {_e(note)}.")
    return '<p class="sub">' + "<br>".join(lines) + "</p>"


def _recommendation_section(report: RunReport) -> str:
    """The pick (or none and the closest), the rule in words, and the frontier's dominance rule."""
    from core.reporting.recommend import FRONTIER_RULE, recommendation

    if not report.variants or "min_agreement_pct" not in report.options:
        return '<p class="na">No variant to recommend yet.</p>'
    rec = report.get("recommendation") or recommendation(report)
    if rec.get("variant"):
        head = f'<p class="banner pass">Recommended: <strong>{_e(rec["variant"])}</strong>'
        if rec.get("runner_up"):
            head += f" · runner-up {_e(rec['runner_up'])}"
        head += "</p>"
    else:
        head = '<p class="banner fail">No variant qualifies for a recommendation.</p>'
    return (
        head
        + f'<p class="sub">Rule: {_e(rec["rule"])}. {_e(rec["reason"])}.<br>'
        + "Trade-off chart (below, with the other charts): the dashed line is the Pareto "
        + f"frontier — {_e(FRONTIER_RULE)}.</p>"
    )


def _chance_warning(report: RunReport) -> str:
    """Warn when the reference is near chance: wrong preprocessing looks like agreement."""
    reason = no_verdict_reason(report.get("reference"))
    if reason is None:
        return ""
    return (
        f'<p class="warn">{_e(reason[0].upper() + reason[1:])}. Two models fed garbage agree '
        "with each other.</p>"
    )


def _verdict_table(report: RunReport, variants: list[Variant], threshold: float) -> str:
    ks = {v.get("k") for v in variants if v.get("k") is not None}
    common_k = ks.pop() if len(ks) == 1 else None
    topk_head = "top-k" if common_k is None else f"top-{_e(common_k)}"
    head = (
        "<tr><th>variant</th><th>status</th><th>verdict</th><th>size (MB)</th>"
        "<th>size vs original</th><th>top-1 agreement (95 % CI)</th><th>n</th>"
        f"<th>{topk_head} agreement</th>"
        "<th>accuracy original / TFLite</th><th>disagreements</th><th>p50 (ms)</th>"
        "<th>p99 or max (ms)</th></tr>"
    )
    rows = []
    for v in variants:
        size = _num(v.get("size_bytes"))
        ci = v.get("top1_agreement_ci95") or [None, None]
        ci_text = (
            f" <br><small>({_fmt(ci[0])} &ndash; {_fmt(ci[1])})</small>"
            if isinstance(ci, list | tuple) and len(ci) == 2 and _num(ci[0]) is not None
            else ""
        )
        agreement = _num(v.get("top1_agreement_pct"))
        agreement_text = (
            '<span class="na">—</span>' if agreement is None else f"{agreement:.2f} %{ci_text}"
        )
        k = v.get("k")
        topk = _fmt(v.get("topk_agreement_pct"), ".2f", " %")
        if common_k is None and k is not None and _num(v.get("topk_agreement_pct")) is not None:
            topk = f"top-{_e(k)}: {topk}"
        latency = v.get("latency_ms") or {}
        reduction = _size_change(_num(v.get("size_reduction_pct")))
        vs_f32 = _num(v.get("size_reduction_vs_float32_pct"))
        if vs_f32 is not None:
            reduction += f" <br><small>{size_change_label(vs_f32)} vs float32 TFLite</small>"
        rows.append(
            "<tr>"
            f"<td><strong>{_e(display_name(report, v))}</strong></td>"
            f"<td>{_e(v.get('status'))}</td>"
            f"<td>{_verdict(v, threshold)}</td>"
            f'<td class="num">{_fmt(None if size is None else size / 1e6, ".3f")}</td>'
            f'<td class="num">{reduction}</td>'
            f'<td class="num">{agreement_text}</td>'
            f'<td class="num">{_fmt(v.get("n"), ".0f")}</td>'
            f'<td class="num">{topk}</td>'
            f'<td class="num">{_fmt(v.get("reference_accuracy_pct"), ".2f", " %")} / '
            f"{_fmt(v.get('tflite_accuracy_pct'), '.2f', ' %')}</td>"
            f'<td class="num">{_fmt(v.get("disagreements"), ".0f")}{_split_cell(v)}</td>'
            f'<td class="num">{_fmt(latency.get("p50"), ".3f")}</td>'
            f'<td class="num">{_tail(latency)}</td>'
            "</tr>"
        )
        if v.get("error"):
            # A full-width row under the variant: error text is long and must stay readable.
            rows.append(
                f'<tr class="errrow"><td>{_e(short_name(v.name))} error</td>'
                f'<td colspan="11" class="err">{_e(v["error"])}</td></tr>'
            )
        elif v.get("verdict_reason"):
            rows.append(
                f'<tr class="errrow"><td>{_e(short_name(v.name))} {NO_VERDICT}</td>'
                f'<td colspan="11" class="err">{_e(v["verdict_reason"])}</td></tr>'
            )
        for warning in v.get("warnings") or []:
            # NaN/Inf outputs on some images: counted as disagreements, so say how many.
            rows.append(
                f'<tr class="errrow"><td>{_e(short_name(v.name))} warning</td>'
                f'<td colspan="11" class="err">{_e(warning)}</td></tr>'
            )
    return (
        f"<p>Pass threshold: top-1 agreement ≥ {threshold:g} %. Sizes in MB (10<sup>6</sup> "
        "bytes); size change against the original model (−: smaller).</p>"
        f'<div class="wide"><table id="verdict">{head}{"".join(rows)}</table></div>'
    )


def _reference_table(report: RunReport) -> str:
    ref = report.get("reference") or {}
    if not ref:
        return ""
    latency = ref.get("latency_ms") or {}
    size = _num(ref.get("size_bytes"))
    rows = [
        ("path", _e(ref.get("path"))),
        ("format", _e(ref.get("format"))),
        ("size (MB)", _fmt(None if size is None else size / 1e6, ".3f")),
        ("sha256", f"<code>{_e(ref.get('sha256'))}</code>"),
        ("input", f"{_e(ref.get('input_shape'))} {_e(ref.get('input_dtype'))}"),
        ("classes", _e(ref.get("num_classes"))),
        ("outputs", _e(output_kind_text(ref))),
        ("accuracy", _fmt(ref.get("accuracy_pct"), ".2f", " %")),
        ("accuracy baseline", _e(_baseline_text(ref))),
        ("latency p50 (ms)", _fmt(latency.get("p50"), ".3f")),
        ("latency tail (ms)", _tail(latency)),
    ]
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<h3>Original model</h3><table id="reference">{body}</table>'


def _baseline_text(ref: Mapping[str, Any]) -> str:
    """The majority-class test the verdict rests on, e.g. `majority class 7 at 52.0 % of
    n=400 (one-sided binomial p = 1e-30)`; "—" without labels."""
    baseline = accuracy_baseline_of(ref)
    if baseline is None:
        return "—"
    return f"{baseline.text()} (one-sided binomial p = {baseline.p_value:.2g})"


def _charts(report: RunReport, variants: list[Variant], threshold: float) -> str:
    # Imported here: plotly is only needed when a report is rendered.
    from core.reporting.figures import (
        ORIGINAL_LABEL,
        agreement_figure,
        latency_percentiles_figure,
        size_figure,
        tradeoff_figure,
    )
    from core.reporting.recommend import pareto_frontier, tradeoff_points
    from core.reporting.sweep import sweep_figure, swept_modes

    ref = report.get("reference") or {}
    names = [v.name for v in variants]
    figures = []

    sizes: dict[str, int] = {}
    if _num(ref.get("size_bytes")) is not None:
        sizes[ORIGINAL_LABEL] = int(ref["size_bytes"])
    reductions: dict[str, float | None] = {}
    for name, v in zip(names, variants, strict=True):
        if _num(v.get("size_bytes")) is not None:
            sizes[name] = int(v["size_bytes"])
            reductions[name] = _num(v.get("size_reduction_pct"))
    if len(sizes) > 1 or (sizes and ORIGINAL_LABEL not in sizes):
        figures.append(size_figure(sizes, reductions_pct=reductions))

    agreed = [
        (name, v)
        for name, v in zip(names, variants, strict=True)
        if _num(v.get("top1_agreement_pct")) is not None
    ]
    if agreed:
        ci95: list[tuple[float, float] | None] = []
        for _, v in agreed:
            ci: Any = v.get("top1_agreement_ci95")
            ok = isinstance(ci, list | tuple) and len(ci) == 2 and None not in ci
            ci95.append((float(ci[0]), float(ci[1])) if ok else None)
        figures.append(
            agreement_figure(
                [n for n, _ in agreed],
                [float(v["top1_agreement_pct"]) for _, v in agreed],
                ci95,
                threshold_pct=threshold,
                n=[v.get("n") for _, v in agreed],
            )
        )

    percentiles: dict[str, dict[str, float | None]] = {}
    if ref.get("latency_ms"):
        percentiles[ORIGINAL_LABEL] = {k: _num(ref["latency_ms"].get(k)) for k in _LATENCY_KEYS}
    for name, v in zip(names, variants, strict=True):
        if v.get("latency_ms"):
            percentiles[name] = {k: _num(v["latency_ms"].get(k)) for k in _LATENCY_KEYS}
    if percentiles:
        figures.append(latency_percentiles_figure(percentiles))

    points = tradeoff_points(variants)
    if points:
        pick = (report.get("recommendation") or {}).get("variant")
        figures.append(tradeoff_figure(points, frontier=pareto_frontier(points), pick=pick))

    sweep = report.sweep
    if sweep is not None and swept_modes(sweep):
        figures.append(sweep_figure(sweep))

    if not figures:
        return '<p class="na">No measurements to chart yet.</p>'
    out = []
    for i, fig in enumerate(figures):
        # plotly.js goes in once, with the first chart; the others reuse it.
        out.append(
            '<div class="chart">'
            + fig.to_html(
                full_html=False,
                include_plotlyjs=(i == 0),
                config=_PLOTLY_CONFIG,
                div_id=f"chart-{i}",  # stable ids: the same run renders the same bytes
            )
            + "</div>"
        )
    return "\n".join(out)


_LATENCY_KEYS = ("p50", "p90", "p99", "max", "n")


def _tail(latency: dict[str, Any]) -> str:
    """The quotable tail, named: "p99 4.210" from 100 runs, "max 5.002" below (n < 100)."""
    if not latency:
        return _fmt(None, ".3f")
    label, value = tail_latency(latency)
    return f"{label} {_fmt(value, '.3f')}"


def _split_cell(variant: Variant) -> str:
    """The three-way split under a quantized variant's disagreement count."""
    split = variant.get("disagreement_split")
    if not isinstance(split, dict) or not variant.get("disagreements"):
        return ""
    return (
        f"<br><small>{_e(split.get('conversion'))} conversion · "
        f"{_e(split.get('quantization'))} quantization</small>"
    )


def _galleries(run_dir: Path, report: RunReport, variants: list[Variant]) -> str:
    root = rundir.dataset_root(report.get("dataset") or {})
    out = []
    for v in variants:
        name = short_name(v.name)
        count, disagree_count, disagreeing = _most_different(
            rundir.variant_samples_path(run_dir, v), MAX_GALLERY
        )
        if not count:
            if v.get("status") == VariantStatus.DONE:
                out.append(f"<h3>{_e(name)}</h3><p class='na'>No per-sample table.</p>")
            continue
        header = (
            f"<h3>{_e(name)}: {disagree_count} of {count} samples disagree</h3>"
            if disagree_count
            else f"<h3>{_e(name)}: every sample agrees</h3>"
        )
        reference_rows = _rows_with_index(
            run_dir / rundir.SAMPLES, {r.get("index") for r in disagreeing}
        )
        cards = []
        for r in disagreeing:
            ref = reference_rows.get(r.get("index"), {})
            relpath = ref.get("relpath") or ""
            cards.append(
                '<div class="card">'
                + _thumbnail(root, relpath)
                + f'<div class="path">{_e(relpath or "sample " + str(r.get("index")))}</div>'
                + f"<div>original: <strong>{_e(_class_label(report, ref.get('ref_top1')))}"
                f"</strong> {_fmt(ref.get('ref_top1_prob'), '.3f')}</div>"
                + f"<div>TFLite: <strong>{_e(_class_label(report, r.get('tfl_top1')))}"
                f"</strong> {_fmt(r.get('tfl_top1_prob'), '.3f')}</div>"
                + (f'<div class="cause">{_e(r["cause"])}</div>' if r.get("cause") else "")
                + (
                    f"<div>label: {_e(_class_label(report, ref.get('label')))}</div>"
                    if ref.get("label") not in (None, "")
                    else ""
                )
                + "</div>"
            )
        gallery = f'<div class="gallery">{"".join(cards)}</div>' if cards else ""
        out.append(header + gallery)
    return "\n".join(out) or '<p class="na">No per-sample results yet.</p>'


def _most_different(path: Path, keep: int) -> tuple[int, int, list[dict[str, str]]]:
    """(rows, disagreeing rows, the `keep` disagreeing rows of largest max |Δp|) of a variant's
    samples file, read as a stream: a 50,000-row file is never held whole."""
    count = disagree_count = 0

    def disagreeing() -> Iterator[dict[str, str]]:
        nonlocal count, disagree_count
        for row in _iter_csv(path):
            count += 1
            if not _truthy(row.get("agree")):
                disagree_count += 1
                yield row

    # Most different first: the flips a reviewer should look at before shipping. nsmallest is
    # sorted(...)[:keep], stable: equal deltas keep file order.
    top = heapq.nsmallest(keep, disagreeing(), key=lambda r: -(_num(r.get("max_abs_delta")) or 0.0))
    return count, disagree_count, top


def _rows_with_index(path: Path, indices: set[str | None]) -> dict[str | None, dict[str, str]]:
    """The rows of a CSV whose `index` is in `indices`, by index (streamed)."""
    return {r.get("index"): r for r in _iter_csv(path) if r.get("index") in indices}


def _iter_csv(path: Path) -> Iterator[dict[str, str]]:
    """Rows of a CSV as dicts, one at a time; a missing or unreadable file ends the rows."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            yield from csv.DictReader(f)
    except (OSError, UnicodeDecodeError, csv.Error):
        return


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "1.0")


def _thumbnail(root: Path | None, relpath: str) -> str:
    """An <img> with a PNG data URI, or a placeholder when the image cannot be shown."""
    path = None if root is None or not relpath else resolve_inside(root, relpath)
    if path is None:
        return '<div class="ph">no image</div>'
    try:
        uri = thumbnail_data_uri(path)
    except Exception:
        # Any failure to decode (missing, truncated, bomb, odd mode) must not stop the report.
        return '<div class="ph">image unavailable</div>'
    return f'<img alt="{_e(relpath)}" src="{uri}">'


def thumbnail_data_uri(path: Path, *, size: int = THUMB_PX) -> str:
    """A PNG thumbnail of an image file as a `data:` URI, longest side `size` pixels.

    Decoded by the model's own decoder (EXIF, alpha over white, 16-bit and palette content
    kept), so the report shows the pixels the model was fed; small images are upscaled with
    nearest-neighbour.

    Raises:
        QuantLensError: the file cannot be read or decoded (callers that must not fail, like
        the report, catch it and show a placeholder).
    """
    from core.inputs.images import thumbnail_png

    png = thumbnail_png(path, size=size, max_bytes=MAX_THUMB_SOURCE_BYTES)
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _causes_section(variants: list[Variant]) -> str:
    """Each diagnosed variant's root causes in words (`diagnosis.causes`), one item per cause."""
    items = []
    for v in variants:
        causes = v.causes
        if causes is None or not causes.causes:
            continue
        listed = "".join(f"<li>{_e(line)}</li>" for line in causes.lines())
        measured = (
            f"measured on {causes.calibration_images} calibration and "
            f"{causes.evaluated_images} evaluated images"
        )
        items.append(f"<h3>{_e(short_name(v.name))}</h3><p>{_e(measured)}</p><ul>{listed}</ul>")
    return '<h2>Root causes</h2><div id="causes">' + "".join(items) + "</div>" if items else ""


def _sweep_statement(report: RunReport) -> str:
    """The calibration sweep's conclusion in words (its chart is among the charts)."""
    sweep = report.sweep
    if sweep is None or not sweep.statement:
        return ""
    return f'<h3>Calibration sweep</h3><p id="sweep">{_e(sweep.statement)}</p>'


def _dataset_section(report: RunReport) -> str:
    dataset = report.get("dataset") or {}
    prep = report.get("preprocessing") or {}
    options = report.get("options") or {}
    skipped = [s for s in dataset.get("skipped") or [] if isinstance(s, dict)]
    num_skipped = dataset.get("num_skipped")
    if num_skipped is None:
        num_skipped = len(skipped)
    rows = [
        ("path", _e(dataset.get("path"))),
        ("kind", _e(dataset.get("kind"))),
        ("samples evaluated", _e(dataset.get("num_samples"))),
        ("samples skipped", _e(num_skipped)),
        ("labels", "yes" if dataset.get("has_labels") else "no"),
        (
            "preprocessing",
            f"{_e(prep.get('preset'))} · {_e(prep.get('height'))}&times;{_e(prep.get('width'))}"
            f"&times;{_e(prep.get('channels'))} · range {_e(prep.get('value_range'))}",
        ),
        ("calibration samples", _e(options.get("calibration_samples"))),
        ("seed", _e(options.get("seed"))),
    ]
    line = calibration_line(report.calibration)
    if line is not None:
        rows.append(("calibration images", _e(line.removeprefix("calibration: "))))
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    out = f'<table id="dataset">{body}</table>'
    if skipped:
        items = "".join(
            f"<tr><td>{_e(s.get('relpath'))}</td><td>{_e(s.get('reason'))}</td></tr>"
            for s in skipped[:MAX_SKIPPED_LISTED]
        )
        more = (
            f"<p>… and {len(skipped) - MAX_SKIPPED_LISTED} more (see skipped.csv).</p>"
            if len(skipped) > MAX_SKIPPED_LISTED
            else ""
        )
        out += (
            f'<h3>Skipped samples</h3><table id="skipped"><tr><th>file</th><th>reason</th></tr>'
            f"{items}</table>{more}"
        )
    return out


def _speedup_table(report: RunReport, variants: list[Variant]) -> str:
    """Each timed variant's speed-up: vs float32 TFLite with its block spread, then vs the
    TensorFlow original, and the flag when the timing blocks disagree."""
    rows = []
    for v in variants:
        lines = speedup_lines(v.name, v.result.speedup, v.result.speedup_vs_reference)
        if lines.headline is None and lines.vs_original is None:
            continue
        flag = f'<span class="fail">{_e(lines.unstable)}</span>' if lines.unstable else ""
        rows.append(
            f"<tr><td><strong>{_e(display_name(report, v))}</strong></td>"
            f"<td>{_e(lines.headline or '—')}</td><td>{_e(lines.vs_original or '—')}</td>"
            f"<td>{flag}</td></tr>"
        )
    if not rows:
        return '<p class="na">Not timed yet.</p>'
    head = (
        f"<tr><th>variant</th><th>vs {BASELINE_LABEL} (the baseline)</th>"
        "<th>second: vs the TensorFlow original</th><th>stability</th></tr>"
    )
    note = (
        "<p><small>The models were timed in interleaved blocks (A B A B …) at batch 1; each "
        "speed-up is the median over blocks of the ratio of the blocks' median latencies, with "
        "the range over blocks.</small></p>"
    )
    return f'<table id="speedup">{head}{"".join(rows)}</table>{note}'


def _runtime_section(report: RunReport) -> str:
    """The runtime matrix (variants x runtimes), when the run asked for one."""
    from core.reporting.runtimes import FLIPS_MEANING, matrix_rows, subset_sentence

    header, rows = matrix_rows(report)
    matrix = report.runtimes
    if matrix is None or not rows:
        return ""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        f"<tr><td><strong>{_e(row[0])}</strong></td>"
        + "".join(
            f'<td class="na">{_e(c)}</td>' if c.startswith("not run") else f"<td>{_e(c)}</td>"
            for c in row[1:]
        )
        + "</tr>"
        for row in rows
    )
    return (
        "<h2>Runtimes</h2><p>Top-1 agreement with the original (95% CI) of each variant's "
        "file under each runtime.</p>"
        f'<table id="runtimes"><tr>{head}</tr>{body}</table>'
        f"<p><small>{_e(subset_sentence(matrix))}. {_e(FLIPS_MEANING)}.</small></p>"
    )


def _targets_section(report: RunReport, variants: list[Variant]) -> str:
    """The pick for every target (with what each excludes) and the deployability pre-flight."""
    from core.reporting.recommend import recommendations
    from core.reporting.targets import (
        DEPLOYABILITY_COLUMNS,
        DEPLOYABILITY_NOTES,
        deployability_rows,
    )

    if not variants or "min_agreement_pct" not in report.options:
        return '<p class="na">No variant to place on a target yet.</p>'
    every = report.get("recommendations") or recommendations(report)
    rows = []
    for target, rec in every.items():
        pick = _e(rec["variant"]) if rec.get("variant") else "none"
        notes = [_e(rec["reason"])]
        notes += [
            f"excluded {_e(e['variant'])}: {_e(e['reason'])}" for e in rec.get("excluded") or ()
        ]
        notes += [
            f"{_e(e['variant'])} listed once, as {_e(e['same_as'])} (identical outputs)"
            for e in rec.get("listed_once") or ()
        ]
        rows.append(
            f"<tr><td><strong>{_e(target)}</strong></td><td>{pick}</td>"
            f"<td>{'<br>'.join(notes)}</td></tr>"
        )
    picks = (
        '<table id="targets"><tr><th>target</th><th>recommended</th><th>why</th></tr>'
        + "".join(rows)
        + "</table>"
    )
    found = deployability_rows(variants)
    if not found:
        table = '<p class="na">No deployability pre-flight in this run.</p>'
    else:
        head = "".join(f"<th>{_e(c)}</th>" for c in DEPLOYABILITY_COLUMNS)
        body = "".join(
            "<tr>" + "".join(f"<td>{_e(r[c])}</td>" for c in DEPLOYABILITY_COLUMNS) + "</tr>"
            for r in found
        )
        table = f'<table id="deployability"><tr>{head}</tr>{body}</table>'
    footnotes = "".join(f"<p><small>{_e(n)}</small></p>" for n in DEPLOYABILITY_NOTES)
    return picks + table + footnotes


def _flip_hunt_section(variants: list[Variant]) -> str:
    """The flip hunt (--perturb), when the run has one: a row per variant and perturbation."""
    from core.reporting.report import flip_hunt_line

    rows = [
        f"<tr><td><strong>{_e(short_name(v.name))}</strong></td><td>{_e(flip_hunt_line(p))}</td></tr>"
        for v in variants
        for p in v.result.flip_hunt or ()
    ]
    if not rows:
        return ""
    return (
        "<h2>Under small perturbations (flip hunt)</h2>"
        '<table id="flip-hunt"><tr><th>variant</th><th>perturbation: agreement with the original '
        "on the images whose original answer held</th></tr>" + "".join(rows) + "</table>"
    )


def _environment_table(report: RunReport) -> str:
    env = report.get("environment") or {}
    if not env:
        return '<p class="na">Not recorded.</p>'
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in env.items())
    return f'<table id="environment">{body}</table>'


def _command_section(report: RunReport) -> str:
    command = (report.get("run") or {}).get("command")
    if isinstance(command, list | tuple):
        command = shlex.join(str(c) for c in command)
    if not command:
        return '<p class="na">The command was not recorded.</p>'
    return f'<pre id="command"><code>{_e(command)}</code></pre>'
