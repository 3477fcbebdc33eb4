"""The Disagreements gallery filter "flipped by a small perturbation": the images the flip hunt
(`--perturb`) found a variant newly flipping under one perturbation."""

from __future__ import annotations

from core.reporting.results import RunResults
from ui import keys, widgets


def perturbation_filter(res: RunResults, variant: str) -> tuple[str, tuple[int, ...]] | None:
    """(perturbation, images) when the user chose one, or None when off or the flip hunt found
    no new flip of `variant` (the choice is not shown then)."""
    return widgets.gallery_image_filter(
        "Flipped by a small perturbation",
        res.perturbation_flips(variant),
        key=keys.DISAGREE_PERTURBATION,
        describe=lambda p, count: f"{p}: {count} new flip(s)",
        help="Images where the variant agreed with the original, and still does on the clean "
        "image, but answers differently under the perturbation while the original keeps its "
        "answer (the flip hunt). The gallery shows the clean image and its answers.",
    )
