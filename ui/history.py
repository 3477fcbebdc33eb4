"""Streamlit glue for the run store: a cached connection, a briefly cached run list, actions."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from core.errors import QuantLensError
from core.history import cleanup
from core.history.store import RunRow, RunStore, open_store
from core.inputs import rundir
from core.jobs import launch as jobs
from core.reporting.report import NO_VERDICT
from core.reporting.report_changes import set_run
from core.reporting.results import report_mtime
from core.reporting.runmodel import RunReport, read_report, update_report
from core.types import RunStatus
from ui import keys

LIST_TTL_S = 3.0  # short: runs started in another tab or the CLI show up within seconds
LIST_LIMIT = 500
_ERROR_CHARS = 90


def home() -> Path:
    """The current workspace folder (resolved, so it is a stable cache key)."""
    return rundir.workspace_home().resolve()


@st.cache_resource(max_entries=4, show_spinner=False)
def _store(home_dir: str) -> RunStore:
    # One connection per workspace for the server's lifetime: RunStore is thread-safe, and
    # recovered_from (a corrupt database moved aside) is only known to the opener.
    return open_store(Path(home_dir))


def store() -> RunStore:
    """The run store of the current workspace.

    Raises:
        StoreError: the database cannot be opened (locked, newer schema, unreadable).
    """
    return _store(str(home()))


@st.cache_resource(max_entries=4, show_spinner=False)
def _recover(home_dir: str) -> tuple[str, ...]:
    # Open the shared store first: if the file is corrupt, this opener moves it aside and
    # remembers where (recovered_from), so the History page can say so.
    _store(home_dir)
    return tuple(jobs.recover_interrupted(home=Path(home_dir)))


def recover_once() -> tuple[str, ...]:
    """At server start (once per workspace), mark runs whose supervisor died as interrupted.

    Returns the ids that were marked. A store that cannot be opened is left for the pages to
    report; the app must still start.
    """
    try:
        return _recover(str(home()))
    except QuantLensError:
        return ()


@st.cache_data(ttl=LIST_TTL_S, max_entries=32, show_spinner=False)
def _list_runs(home_dir: str, search: str, limit: int) -> list[RunRow]:
    return _store(home_dir).list_runs(search=search or None, limit=limit)


def list_runs(*, search: str = "", limit: int = LIST_LIMIT) -> list[RunRow]:
    """Runs newest first from one store query, cached for a few seconds per (search, limit).

    Raises:
        StoreError: the database cannot be read.
    """
    return _list_runs(str(home()), search.strip(), int(limit))


def invalidate() -> None:
    """Forget cached run lists after a change (rename, delete, cancel)."""
    _list_runs.clear()


def get_run(run_id: str) -> RunRow | None:
    """One run from the store (uncached: used right before acting on it)."""
    return store().get_run(run_id)


# ---- presentation -----------------------------------------------------------------------------
def when(created: str) -> str:
    """An ISO 8601 UTC timestamp as local "YYYY-MM-DD HH:MM:SS" (the text itself if unparsable)."""
    try:
        return datetime.fromisoformat(created).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError):
        return str(created)


def short_path(path: str, *, base: Path | None = None) -> str:
    """A path relative to the workspace when it lies inside it, else as given."""
    if not path:
        return "—"
    base = base or home()
    # A string prefix, not resolve()/relative_to(): stored paths are already absolute and
    # resolved, and 2 × N path objects per render dominated the table build for a long history.
    prefix = str(base).rstrip(os.sep) + os.sep
    return path[len(prefix) :] if path.startswith(prefix) else path


def status_text(row: RunRow) -> str:
    """The status, with the one-line reason for a run that did not finish well."""
    text = str(row.status)
    if row.error and row.status is not RunStatus.DONE:
        reason = row.error if len(row.error) <= _ERROR_CHARS else row.error[:_ERROR_CHARS] + "…"
        # "cancelled by the user" says its status itself ("cancelled: cancelled by…" was cut).
        text = reason if reason.startswith(text) else f"{text}: {reason}"
    return text


def verdict(row: RunRow) -> str:
    """FAIL when a judged variant failed; NO VERDICT when a variant could not be judged (its
    original is near chance); PASS when every variant passed; blank when none was judged."""
    if row.all_passed is False:
        return "FAIL"
    if row.no_verdict:
        return NO_VERDICT
    return "" if row.all_passed is None else "PASS"


def runs_table(rows: Sequence[RunRow], *, base: Path | None = None) -> pd.DataFrame:
    """The history table: one row per run, user text kept verbatim (st.dataframe shows text).

    What a run came to (status, verdict, best agreement) comes before its inputs: the paths are
    wide, and after them the verdict was off the right edge of the table in a laptop window."""
    base = base or home()
    return pd.DataFrame(
        {
            "name": [r.name for r in rows],
            "when": [when(r.created) for r in rows],
            "status": [status_text(r) for r in rows],
            "verdict": [verdict(r) for r in rows],
            "best agreement (%)": [r.best_agreement_pct for r in rows],
            "modes": [", ".join(r.modes) for r in rows],
            "model": [short_path(r.model_path, base=base) for r in rows],
            "data": [short_path(r.data_path, base=base) for r in rows],
            "id": [r.id for r in rows],
        }
    )


def table_key(ids: Sequence[str]) -> str:
    """The widget key of the history table for this exact list of runs.

    Row selections are positions; when the list changes (a search, a delete, a new run) a new
    key starts a fresh selection instead of silently pointing at other runs.
    """
    digest = hashlib.sha1("\n".join(ids).encode(), usedforsecurity=False).hexdigest()[:10]
    return f"{keys.HISTORY_TABLE}.{digest}"


def selected_ids(ids: Sequence[str], event: Any) -> list[str]:
    """Run ids of the rows selected in the table's selection event (positions outside dropped)."""
    try:
        positions = list(event.selection.rows)
    except AttributeError:
        try:
            positions = list(event["selection"]["rows"])
        except (KeyError, TypeError):
            positions = []
    return [ids[p] for p in positions if isinstance(p, int) and 0 <= p < len(ids)]


# ---- actions ------------------------------------------------------------------------------------
def folder_run_id(row: RunRow) -> str | None:
    """The id the result pages use for this run, or None when its report is missing.

    Runs made with `python -m core run --out DIR` live outside the workspace; the pages find
    them through the store by run id.
    """
    try:
        run_dir = row.run_dir.resolve()
        root = rundir.runs_root(home()).resolve()
    except OSError:
        return None
    if not (run_dir / rundir.REPORT).is_file():
        return None
    # Under runs/ the folder name is the id the pages use; elsewhere (a CLI `--out DIR`)
    # the run id, which the pages resolve through the store.
    return run_dir.name if run_dir.parent == root else row.id


def rename(row: RunRow, name: str) -> None:
    """Rename a run in the store and in its report.json.

    The report carries the name into the result pages and report.html. A running worker
    merges other writers' changes into each save, so the new name stays.

    Raises:
        StoreError: blank name, unknown run, or a locked database.
    """
    store().rename_run(row.id, name)
    invalidate()

    def named(report: dict[str, Any]) -> None:
        set_run(report, name=name)

    # The store holds the name; an unreadable report keeps its old one.
    with contextlib.suppress(OSError, QuantLensError):
        update_report(row.run_dir, named)


def delete(run_ids: Sequence[str]) -> list[str]:
    """Delete finished runs (rows and files); returns one message per run that could not go."""
    problems = []
    for rid in run_ids:
        try:
            cleanup.delete_run(store(), rid)
        except QuantLensError as exc:
            problems.append(str(exc))
    invalidate()
    return problems


def pending_deletes(requested: object, shown: Collection[str]) -> list[str]:
    """The runs a delete confirmation asks about: those requested that are still listed."""
    if not isinstance(requested, list | tuple):
        return []
    return [rid for rid in requested if rid in shown]


def ask_to_delete(run_ids: Sequence[str]) -> None:
    """Open the delete confirmation for these runs (a separate step: one click never deletes)."""
    st.session_state[keys.HISTORY_CONFIRM_DELETE] = list(run_ids)
    st.rerun()


def delete_confirmation(by_id: Mapping[str, RunRow]) -> None:
    """The "Delete N run(s)?" box while a delete waits for "Yes, delete" or "Keep"."""
    pending = pending_deletes(st.session_state.get(keys.HISTORY_CONFIRM_DELETE), by_id)
    if not pending:
        return
    with st.container(border=True):
        st.warning(
            f"Delete {len(pending)} run(s)? Their database rows and run folders (models, "
            "tables, reports) are removed for good.",
            icon=":material/delete_forever:",
        )
        for rid in pending:
            st.text(f"• {by_id[rid].name or rid}  ({rid})")
        yes, no = st.columns([1, 5])
        if yes.button("Yes, delete", key=keys.HISTORY_DELETE_YES, type="primary"):
            problems = delete(pending)
            st.session_state.pop(keys.HISTORY_CONFIRM_DELETE, None)
            if problems:
                for p in problems:
                    st.error(p)
            else:
                st.session_state[keys.HISTORY_FLASH] = f"Deleted {len(pending)} run(s)."
                st.rerun()
        if no.button("Keep", key=keys.HISTORY_DELETE_NO):
            st.session_state.pop(keys.HISTORY_CONFIRM_DELETE, None)
            st.rerun()


def cancel(row: RunRow) -> None:
    """Ask a queued or running run to stop.

    Raises:
        QuantLensError: the run's folder or the store cannot be written.
    """
    try:
        jobs.cancel_run(row.id, home=home())
    except OSError as exc:
        raise QuantLensError(
            f"cannot cancel run {row.name or row.id!r}: {exc.strerror}; check the workspace folder"
        ) from None
    invalidate()


# ---- reports for the compare page -------------------------------------------------------------------
@st.cache_data(max_entries=32, show_spinner=False)
def _report(run_dir: str, mtime: float) -> RunReport | None:
    del mtime  # part of the key only: a rewritten report is read again
    try:
        return read_report(Path(run_dir))
    except QuantLensError:
        return None


def report(row: RunRow) -> RunReport | None:
    """The run's typed report (None while it has none or it is unreadable)."""
    return _report(str(row.run_dir), report_mtime(row.run_dir))
