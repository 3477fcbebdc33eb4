"""Which run the pages show, and the live progress panel of the active job."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import streamlit as st

from core.errors import QuantLensError
from core.history.store import RunRow
from core.jobs import launch as jobs
from core.types import UNSUCCESSFUL_STATUSES, ProgressEvent, RunStatus, short_name
from ui import fmt, history, keys
from ui.cache import run_path

SIDEBAR_RUNS = 30
_LABEL_NAME_CHARS = 20

_ICONS = {
    "done": ":material/check_circle:",
    "failed": ":material/error:",
    "crashed": ":material/dangerous:",
    "timeout": ":material/timer_off:",
    "cancelled": ":material/block:",
    "running": ":material/progress_activity:",
    "pending": ":material/schedule:",
}


def active_run() -> str | None:
    """The run whose worker runs now, else the first queued one (shared by every tab)."""
    try:
        return jobs.active_run_id(home=history.home())
    except QuantLensError:  # an unreadable store is reported by the page that needs it
        return None


def active_runs() -> list[RunRow]:
    """Every running and queued run of the workspace, oldest first (empty if the store fails)."""
    try:
        return jobs.active_runs(home=history.home())
    except QuantLensError:
        return []


def recent_runs(limit: int = SIDEBAR_RUNS) -> list[RunRow]:
    """The newest runs from the store, read fresh (the one list: dashboard and CLI runs alike)."""
    try:
        return history.store().list_runs(limit=limit)
    except QuantLensError:
        return []


def selected_run_id() -> str | None:
    """The run the result pages show: the one chosen in session, else the active, else newest."""
    chosen = st.session_state.get(keys.SELECTED_RUN)
    if chosen and run_path(str(chosen)).is_dir():
        return str(chosen)
    rid = active_run() or next((r.id for r in recent_runs(1)), None)
    if rid:
        st.session_state[keys.SELECTED_RUN] = rid
    return rid


def select_run(run_id: str) -> None:
    """Make `run_id` the run every result page shows."""
    st.session_state[keys.SELECTED_RUN] = run_id


def run_status(run_id: str) -> dict[str, Any]:
    """status.json of a run ({"status": "queued", ...} when it is not written yet)."""
    d = run_path(run_id)
    try:
        return jobs.read_status(d)
    except (QuantLensError, OSError, ValueError):
        return {"status": RunStatus.QUEUED.value, "error": None, "started": 0.0, "finished": None}


def _variant_lines(run_dir: Path, events: list[ProgressEvent]) -> list[tuple[str, str, str]]:
    """(variant, state, detail) per variant: from report.json when written, else from events."""
    from core.reporting.results import load_results

    rows: dict[str, tuple[str, str]] = {}
    for ev in events:
        if ev.variant:
            rows[ev.variant] = ("running", f"{ev.step}: {ev.shown_message}")
    try:
        res = load_results(run_dir)
    except QuantLensError:
        res = None
    if res is not None:
        for v in res.variants:
            name = v.name
            status = v.status
            if status == "done":
                detail = (
                    f"agreement {fmt.pct(v.result.top1_agreement_pct, digits=2)} "
                    f"(n={v.result.n}) · {fmt.mb(v.result.size_bytes)} · "
                    f"p50 {fmt.ms((v.result.latency_ms or {}).get('p50'))}"
                )
                if v.result.latency_note:
                    detail += f" ({v.result.latency_note})"
            elif status in UNSUCCESSFUL_STATUSES:
                detail = str(v.result.error or status)
            else:
                detail = rows.get(name, ("", status))[1]
            rows[name] = (status, detail)
    return [(name, state, detail) for name, (state, detail) in rows.items()]


def draw_progress(run_id: str) -> bool:
    """Draw the status box of a run; return True while it is still queued or running."""
    d = run_path(run_id)
    status = run_status(run_id)
    state = str(status.get("status") or "queued")
    try:
        events = jobs.read_progress(d)
    except (QuantLensError, OSError, ValueError):
        events = []
    last = events[-1] if events else None
    running = state in (RunStatus.QUEUED.value, RunStatus.RUNNING.value)
    if running:
        label = _running_label(run_id, state, last)
        box_state = "running"
    elif state == RunStatus.DONE.value:
        label, box_state = "Run finished", "complete"
    else:
        label, box_state = f"Run {state}", "error"
    with status_box(label, state=box_state):
        if running:
            frac = 0.0 if last is None else min(1.0, max(0.0, float(last.fraction)))
            st.progress(
                frac, text=fmt.text(last.shown_message) if last else "waiting for the worker"
            )
        if status.get("error"):
            st.error(str(status["error"]))
        for name, vstate, detail in _variant_lines(d, events):
            line = variant_line(short_name(name), vstate, detail)
            if vstate in ("failed", "crashed", "timeout"):
                st.markdown(f":red[{line}]")
            else:
                st.markdown(line)
    return running


def status_box(label: str, *, state: str, expanded: bool = True) -> Any:
    """A status box that keeps `state`: content goes into a container inside it, because
    `with st.status(...)` marks the box complete (a green check) when the block ends, which
    showed on queued and running runs."""
    box = st.status(label, state=state, expanded=expanded)  # type: ignore[arg-type]
    return box.container()


def variant_line(name: str, state: str, detail: str) -> str:
    """One variant's line in the status box: icon, name, state and, when it says more than the
    state itself (a pending variant has nothing else to say), the detail."""
    icon = _ICONS.get(state, ":material/schedule:")
    line = f"{icon} **{fmt.text(name)}** — {fmt.text(state)}"
    return f"{line}: {fmt.text(detail)}" if detail and detail != state else line


def _running_label(run_id: str, state: str, last: ProgressEvent | None) -> str:
    if state == RunStatus.QUEUED.value:
        try:
            ahead = jobs.queue_position(run_id, home=history.home())
        except QuantLensError:
            ahead = None
        return "Queued…" if not ahead else f"Queued — {ahead} run(s) ahead"
    label = "Starting…" if last is None else f"Running — {last.step}"
    if last is not None and last.variant:
        label += f" · {last.variant}"
    return label


@st.fragment(run_every=1.0)
def live_progress(run_id: str) -> None:
    """Poll the run once a second; when it ends, rerun the whole page to show the results."""
    if not draw_progress(run_id):
        st.rerun(scope="app")


def run_label(row: RunRow) -> str:
    """A distinct, current label: `status · name · HH:MM:SS · short id`.

    The status comes first so the narrow sidebar never cuts it off, and it is the store's at
    this render, not a cached one; the short id (the random end of the run id) keeps two runs
    started in the same second apart.
    """
    shown = len(row.name) <= _LABEL_NAME_CHARS
    name = row.name if shown else row.name[:_LABEL_NAME_CHARS] + "…"
    when = history.when(row.created)[-8:]  # HH:MM:SS, local time
    if shown and row.name.endswith(when[:5]):
        # A default name ("saved_model · 14:03") shows the time already: say it once.
        return f"{row.status} · {name} · {row.id[-6:]}"
    return f"{row.status} · {name} · {when} · {row.id[-6:]}"


def sidebar() -> None:
    """The shared sidebar: product name, the run shown on result pages, and a live badge."""
    with st.sidebar:
        st.markdown("### :material/compare: QuantLens")
        st.caption("TensorFlow → TFLite: what you gain, what you lose.")
        rows = {r.id: r for r in recent_runs()}
        selected = selected_run_id()
        if not rows:
            st.caption("No runs yet.")
            return
        ids = list(rows)
        if selected and selected not in rows:
            row = history.get_run(selected)
            if row is not None:
                rows[selected] = row
                ids.insert(0, selected)
        labels = {rid: run_label(rows[rid]) if rid in rows else rid for rid in ids}
        # The browser keeps a select box's option texts while its key stays the same: a run
        # that had finished still read "queued" there. The key carries the labels, so a run
        # whose status moved on gets a new box (the choice itself is SELECTED_RUN).
        key = f"{keys.SIDEBAR_RUN}.{zlib.crc32(' | '.join(labels.values()).encode()):08x}"
        if selected and st.session_state.get(key) != selected:
            st.session_state[key] = selected

        def _changed() -> None:
            select_run(str(st.session_state[key]))

        st.selectbox("Run shown", ids, key=key, format_func=labels.__getitem__, on_change=_changed)
        active = active_runs()
        if active:
            st.info(
                "In progress: " + "; ".join(fmt.text(run_label(r)) for r in active),
                icon=":material/hourglass_top:",
            )
