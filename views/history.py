"""History: every stored run, searchable; open, rename, delete, cancel or compare runs."""

import streamlit as st

from core.errors import QuantLensError
from ui import fmt, history, keys, runs, widgets
from ui.downloads import render_downloads

st.title("History")

# app.py does this at server start; repeated here (cached, so once) for a page run on its own.
history.recover_once()
try:
    store = history.store()
except QuantLensError as exc:
    st.error(str(exc))
    st.stop()
if store.recovered_from is not None:
    st.warning(
        "The run database was damaged and has been moved aside to "
        f"{fmt.code(store.recovered_from)}; a fresh one was started and "
        f"{store.reindexed or 0} runs were re-added from their folders.",
        icon=":material/warning:",
    )

flash = st.session_state.pop(keys.HISTORY_FLASH, None)
if flash:
    st.success(str(flash), icon=":material/check:")

search = st.text_input(
    "Search",
    key=keys.HISTORY_SEARCH,
    placeholder="name, model or data path, or mode (e.g. int8)",
    help="Case-insensitive substring of the run name, model path, data path or a variant name.",
)
try:
    rows = history.list_runs(search=search)
except QuantLensError as exc:
    st.error(str(exc))
    st.stop()

if not rows:
    if search.strip():
        st.info(f"No run matches {fmt.code(search.strip())}.", icon=":material/search_off:")
    else:
        st.info(
            "No runs stored yet. Go to **Setup** and press **Run**, or run "
            "`python -m core run` in this workspace.",
            icon=":material/info:",
        )
        st.page_link("views/setup.py", label="Open Setup", icon=":material/tune:")
    st.stop()

ids = [r.id for r in rows]
by_id = {r.id: r for r in rows}
st.caption(
    f"{len(rows)} run(s){' matching the search' if search.strip() else ''}, newest first. "
    "Select rows to open, rename, delete or compare them. Times are local."
)
event = widgets.table(
    history.runs_table(rows),
    key=history.table_key(ids),
    on_select="rerun",
    selection_mode="multi-row",
    column_config={
        "best agreement (%)": st.column_config.NumberColumn(
            format="%.2f", help="Best top-1 agreement over the run's finished variants."
        ),
        "verdict": st.column_config.TextColumn(
            help="PASS: every judged variant meets the run's agreement threshold."
        ),
        "id": st.column_config.TextColumn(width="small"),
        # Sized for the longest status, "interrupted": a one-word header made it cut "cancelled".
        "status": st.column_config.TextColumn(width=110),
    },
)
selected = history.selected_ids(ids, event)

history.delete_confirmation(by_id)  # while a delete waits for its confirmation

if not selected:
    st.caption("Select a row (the box at its left) to see its actions.")
    st.stop()

# ---- several runs -------------------------------------------------------------------------------
if len(selected) > 1:
    st.subheader(f"{len(selected)} runs selected")
    left, right = st.columns([1, 1])
    with left:
        if st.button(
            "Compare their variants",
            key=keys.HISTORY_COMPARE,
            icon=":material/compare_arrows:",
            type="primary",
        ):
            st.session_state[keys.COMPARE_ITEMS] = [
                f"{rid}/{mode}" for rid in selected for mode in by_id[rid].modes
            ]
            st.switch_page("views/compare.py")
    finished = [rid for rid in selected if by_id[rid].status.finished]
    with right:
        if st.button(
            f"Delete {len(finished)} finished run(s)…",
            key=keys.HISTORY_DELETE,
            icon=":material/delete:",
            disabled=not finished,
        ):
            history.ask_to_delete(finished)
    st.stop()

# ---- one run ----------------------------------------------------------------------------------------
row = by_id[selected[0]]
st.subheader(fmt.text(row.name or row.id))
st.caption(
    f"{fmt.text(history.status_text(row))} · started {history.when(row.created)} · "
    f"id {fmt.code(row.id)}"
)
st.markdown(
    f"model {fmt.code(row.model_path or '?')} · data {fmt.code(row.data_path or '?')} · "
    f"variants {fmt.text(', '.join(row.modes) or '—')}"
)

folder_id = history.folder_run_id(row)
actions = st.columns([2, 1, 4])
with actions[0]:
    if st.button(
        "Open in result pages",
        key=keys.HISTORY_OPEN,
        icon=":material/open_in_new:",
        type="primary",
        disabled=folder_id is None,
        help=None
        if folder_id
        else "This run has no report.json to show (its folder was moved or deleted).",
    ):
        runs.select_run(str(folder_id))
        st.switch_page("views/overview.py")
with actions[1]:
    if row.status.finished:
        if st.button("Delete…", key=keys.HISTORY_DELETE, icon=":material/delete:"):
            history.ask_to_delete([row.id])
    elif st.button("Cancel run", key=keys.HISTORY_CANCEL, icon=":material/stop_circle:"):
        try:
            history.cancel(row)
        except QuantLensError as exc:
            st.error(str(exc))
        else:
            st.session_state[keys.HISTORY_FLASH] = "Cancel requested; the run stops shortly."
            st.rerun()

with st.form(key="history.rename_form", border=False):
    new_name = st.text_input(
        "Rename", value=row.name, key=f"{keys.HISTORY_RENAME}.{row.id}", max_chars=200
    )
    if st.form_submit_button("Save name", key=keys.HISTORY_RENAME_SAVE):
        try:
            history.rename(row, new_name)
        except QuantLensError as exc:
            st.error(str(exc))
        else:
            st.session_state[keys.HISTORY_FLASH] = "Run renamed."
            st.rerun()

with st.expander("Downloads", icon=":material/download:"):
    render_downloads(row.run_dir, name=row.name)
