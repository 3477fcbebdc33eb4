"""A variant's graph in Google's Model Explorer, inside the Layers page, coloured by its per-op
error; the download of the same overlay when the graph cannot be shown here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from core.inputs import rundir
from core.jobs import model_explorer_server as explorer
from core.reporting.model_explorer import SUFFIX, node_data_json
from core.reporting.results import RunResults
from core.reporting.sections.variant import Variant
from ui import fmt, history

GRAPH_HEIGHT_PX = 640


def _overlay_file(res: RunResults, variant: Variant, text: str) -> Path:
    """The overlay as a file Model Explorer reads: `<file_id>.model-explorer.json` in the run
    folder (what `--export model-explorer` writes), rewritten only when it differs; in the
    workspace when the run folder is not writable (a CLI run's `--out` of another user)."""
    path = rundir.variant_file(res.run_dir, variant, SUFFIX)
    try:
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            rundir.write_atomic(path, text.encode())
        return path
    except OSError:
        path = history.home() / "model-explorer" / res.run_id / f"{variant.file_id}{SUFFIX}"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            rundir.write_atomic(path, text.encode())
        return path


def _browser_host() -> str:
    """The host name the browser reached the dashboard by (for an opted-in non-loopback server)."""
    try:
        host = str(st.context.headers.get("Host") or "")
    except Exception:  # no request context (a bare script run): loopback is used
        return ""
    return host.rsplit(":", 1)[0] if host and not host.endswith("]") else host


def model_explorer_panel(
    res: RunResults, variant: Variant, rows: list[dict[str, str]], diagnosis: dict[str, Any]
) -> None:
    """The graph with its overlay in an iframe; the overlay's download either way."""
    st.subheader("Graph (Model Explorer)")
    text = node_data_json(variant.name, rows, diagnosis)
    tflite = rundir.tflite_path(res.run_dir, variant)
    reason = None
    if not tflite.is_file():
        reason = f"{tflite.name} is not in the run folder"
    else:
        try:
            server = explorer.ensure_started(st.get_option("server.address"))
        except explorer.ModelExplorerUnavailable as exc:
            reason = str(exc)
        else:
            overlay = _overlay_file(res, variant, text)
            st.iframe(
                server.url(tflite, overlay, browser_host=_browser_host()), height=GRAPH_HEIGHT_PX
            )
            st.caption(
                f"{fmt.code(tflite.name)}, each op coloured by the table's error column "
                "(green low, red high; the values are in the right-hand panel). Model Explorer "
                f"runs beside this server on port {server.port}; click a layer box to expand it."
            )
    if reason:
        st.info(f"The graph is not shown here: {reason}.", icon=":material/info:")
    st.download_button(
        "Model Explorer node data",
        text,
        file_name=f"{variant.file_id}{SUFFIX}",
        mime="application/json",
        icon=":material/download:",
        key="layers.model_explorer",
    )
    if reason:
        st.caption(
            f"Open {fmt.code(variant.file_id + '.tflite')} (Downloads on Overview) in Google's "
            "Model Explorer (`pip install ai-edge-model-explorer`, then `model-explorer`) and add "
            "this file as node data: each op is coloured by its error, green (low) to red (high)."
        )
