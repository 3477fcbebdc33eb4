"""Download buttons for a run's files: models, labels, per-sample tables, report.json/html."""

from __future__ import annotations

import functools
import io
from pathlib import Path

import pandas as pd
import streamlit as st

from core.errors import QuantLensError
from core.inputs import rundir
from core.reporting.html import render_report_html
from core.reporting.results import report_mtime
from core.reporting.runmodel import RunReport, read_report
from core.reporting.sections.variant import Variant
from core.types import short_name
from ui import keys

_OCTET = "application/octet-stream"


PER_SAMPLE_COLUMNS = (
    "Per-sample CSV: `max_abs_delta` is the largest |Δp| over classes, `top1_prob_delta` the "
    "change of the original's top-1 probability, `kl` is KL(original‖TFLite) in nats, clamped "
    "at 0 (float rounding makes it a hair negative for near-identical outputs), `ref_margin` "
    "the original's top-1 − top-2."
)


def per_sample_csv(run_dir: Path, variant: Variant) -> bytes:
    """samples.csv joined with `<variant>.samples.csv` on `index`, as CSV bytes.

    Every evaluated sample keeps its row (a left join), so a row the variant did not score
    shows empty TFLite columns rather than vanishing.

    Raises:
        QuantLensError: either table is missing or unreadable.
    """
    try:
        samples = pd.read_csv(run_dir / rundir.SAMPLES)
        per_variant = pd.read_csv(rundir.variant_samples_path(run_dir, variant))
    except (OSError, ValueError) as exc:
        raise QuantLensError(
            f"the per-sample tables of {variant.name!r} cannot be read ({exc}); re-run the variant"
        ) from None
    overlap = [c for c in per_variant.columns if c in samples.columns and c != "index"]
    joined = samples.merge(per_variant.drop(columns=overlap), on="index", how="left")
    buf = io.StringIO()
    joined.to_csv(buf, index=False)
    return buf.getvalue().encode("utf-8")


@st.cache_data(max_entries=8, show_spinner=False)
def _report_html(run_dir: str, mtime: float, name: str | None) -> str:
    del mtime  # part of the key only: a rewritten report.json yields a fresh page
    return render_report_html(Path(run_dir), name=name)


def report_html(run_dir: Path, *, name: str | None = None) -> bytes:
    """The self-contained report.html of a run, built once per (run, report version, name)."""
    return _report_html(str(run_dir), report_mtime(run_dir), name).encode("utf-8")


def _read(path: Path) -> bytes:
    return path.read_bytes()


def stored_name(run_dir: Path, report: RunReport) -> str | None:
    """The run's name as the store has it (a rename may be newer than report.json)."""
    from ui.history import store

    candidates = [report.run.id, run_dir.name]
    try:
        for rid in candidates:
            if rid:
                row = store().get_run(str(rid))
                if row is not None:
                    return row.name
    except QuantLensError:
        pass
    return None


def _button(label: str, data: object, *, file_name: str, mime: str, key: str) -> None:
    st.download_button(
        label,
        data=data,  # type: ignore[arg-type]
        file_name=file_name,
        mime=mime,
        key=key,
        icon=":material/download:",
        on_click="ignore",  # a download must not rerun (and redraw) the page
    )


def render_downloads(run_dir: Path | str, *, name: str | None = None) -> None:
    """Download buttons for one run: per variant .tflite and per-sample CSV; report.json/html.

    Files are read when the button is pressed (deferred), so a page with large models does
    not hold their bytes on every rerun.

    Args:
        run_dir: the run's folder (or its id under the workspace's runs/).
        name: the run name for report.html; default the stored name, else the report's.
    """
    d = Path(run_dir) if isinstance(run_dir, Path) else rundir.runs_root() / run_dir
    report_path = d / rundir.REPORT
    if not report_path.is_file():
        st.caption("Downloads appear when the run has written its report.")
        return
    try:
        report = read_report(d)
    except QuantLensError:
        st.caption("This run's report.json is unreadable; nothing to download.")
        return
    prefix = f"{keys.DOWNLOADS}.{d.name}"
    if name is None:
        name = stored_name(d, report) or report.run.name or None

    st.markdown("**Run files**")
    cols = st.columns(3)
    with cols[0]:
        _button(
            rundir.REPORT,
            functools.partial(_read, report_path),
            file_name=rundir.REPORT,
            mime="application/json",
            key=f"{prefix}.report_json",
        )
    with cols[1]:
        _button(
            rundir.REPORT_HTML,
            functools.partial(report_html, d, name=name),
            file_name=rundir.REPORT_HTML,
            mime="text/html",
            key=f"{prefix}.report_html",
        )
    labels = d / rundir.LABELS
    if labels.is_file():
        with cols[2]:
            _button(
                rundir.LABELS,
                functools.partial(_read, labels),
                file_name=rundir.LABELS,
                mime="text/plain",
                key=f"{prefix}.labels",
            )

    if not report.variants:
        return
    st.markdown("**Per variant**")
    st.caption(PER_SAMPLE_COLUMNS)
    for entry in report.variants:
        variant = entry.name
        tflite = rundir.tflite_path(d, entry)
        table = rundir.variant_samples_path(d, entry)
        row = st.columns([1, 2, 2])
        row[0].text(short_name(variant))  # a variant name is data: shown as plain text
        if tflite.is_file():
            with row[1]:
                _button(
                    tflite.name,
                    functools.partial(_read, tflite),
                    file_name=tflite.name,
                    mime=_OCTET,
                    key=f"{prefix}.{variant}.tflite",
                )
        else:
            row[1].caption("no .tflite (variant did not convert)")
        if table.is_file() and (d / rundir.SAMPLES).is_file():
            csv_name = f"{entry.file_id}.per_sample.csv"
            with row[2]:
                _button(
                    csv_name,
                    functools.partial(per_sample_csv, d, entry),
                    file_name=csv_name,
                    mime="text/csv",
                    key=f"{prefix}.{variant}.csv",
                )
        else:
            row[2].caption("no per-sample table")
