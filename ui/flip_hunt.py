"""The Disagreements gallery filter "flipped by a small perturbation": the images the flip hunt
(`--perturb`) found a variant newly flipping under one perturbation."""

from __future__ import annotations

import streamlit as st

from core.reporting.results import RunResults
from ui import keys

NO_PERTURBATION = ""  # the gallery's usual view: disagreements with the original


def perturbation_filter(res: RunResults, variant: str) -> tuple[str, tuple[int, ...]] | None:
    """(perturbation, images) when the user chose one, or None when off or the flip hunt found
    no new flip of `variant` (the choice is not shown then)."""
    flips = res.perturbation_flips(variant)
    if not flips:
        return None
    options = [NO_PERTURBATION, *flips]
    if st.session_state.get(keys.DISAGREE_PERTURBATION) not in options:
        st.session_state[keys.DISAGREE_PERTURBATION] = NO_PERTURBATION
    chosen = st.selectbox(
        "Flipped by a small perturbation",
        options,
        key=keys.DISAGREE_PERTURBATION,
        format_func=lambda p: (
            "off: disagreements with the original"
            if p == NO_PERTURBATION
            else f"{p}: {len(flips[p])} new flip(s)"
        ),
        help="Images where the variant agreed with the original, and still does on the clean "
        "image, but answers differently under the perturbation while the original keeps its "
        "answer (the flip hunt). The gallery shows the clean image and its answers.",
    )
    return None if chosen == NO_PERTURBATION else (str(chosen), flips[str(chosen)])
