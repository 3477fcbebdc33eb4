"""The runtime matrix on the dashboard: the variants x runtimes table (Overview) and the choice
of a runtime whose flips the Disagreements gallery shows."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.reporting.results import RunResults
from core.reporting.runtimes import FLIPS_MEANING, matrix_rows, runtime_label, subset_sentence
from ui import keys, widgets


def matrix_table(res: RunResults) -> None:
    """One table, variants x runtimes, when the run has a runtime matrix (nothing otherwise)."""
    header, rows = matrix_rows(res.report)
    matrix = res.report.runtimes
    if matrix is None or not rows:
        return
    st.subheader("Runtimes")
    widgets.table(
        pd.DataFrame(rows, columns=header),
        key=keys.OVERVIEW_RUNTIMES,
    )
    st.caption(
        "Top-1 agreement with the original (95 % Wilson interval) of each variant's file under "
        f"each runtime. {subset_sentence(matrix)}. {FLIPS_MEANING[0].upper()}{FLIPS_MEANING[1:]}; "
        "the Disagreements page shows them."
    )


def flipping_runtimes(res: RunResults, variant: str) -> dict[str, tuple[int, ...]]:
    """The runtimes that flip at least one image of `variant` against XNNPACK, and those images."""
    matrix = res.report.runtimes
    return {} if matrix is None else matrix.runtime_flips(variant)


def runtime_filter(res: RunResults, variant: str) -> tuple[str, tuple[int, ...]] | None:
    """The gallery filter "flipped by the runtime, not the quantization": (runtime, images) or
    None when off or the run has no runtime that flips this variant."""
    return widgets.gallery_image_filter(
        "Flipped by the runtime, not the quantization",
        flipping_runtimes(res, variant),
        key=keys.DISAGREE_RUNTIME,
        describe=lambda r, count: f"{runtime_label(r)}: {count} image(s) flipped against XNNPACK",
        help="Images whose top-1 under that runtime differs from the same file's top-1 under "
        "XNNPACK: the runtime flipped them, not the quantization. The gallery shows XNNPACK's "
        "answer.",
    )
